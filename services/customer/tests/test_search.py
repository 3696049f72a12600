"""Contact search over a real gRPC channel, on SQLite (FTS5 trigram) and PostgreSQL (tsvector + pg_trgm):
full text over name, email, phone and company (Chinese substrings, email and phone fragments), every
structured filter, whitelisted sort orders with stable keyset pagination over equal keys, the index kept
in step with every write, and tenant isolation (another tenant's rows never match, FTS included)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from crm.customer.v1 import customer_pb2 as pb
from crm.customer.v1 import customer_pb2_grpc
from crm_customer.app import SPEC
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.grpc import violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

Stub = customer_pb2_grpc.CustomerServiceStub
TENANT, OTHER = "t-search", "t-search-other"
ALICE = "0190a5f2-0000-7000-8000-0000000000a1"
BOB = "0190a5f2-0000-7000-8000-0000000000b2"


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        SPEC, database_factory.create("search"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def stub(customer: ServiceRuntime) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as channel:
        yield customer_pb2_grpc.CustomerServiceStub(channel)


async def create(stub: Stub, md: Any, **fields: Any) -> pb.Contact:
    return await stub.CreateContact(pb.CreateContactRequest(contact=pb.Contact(**fields)), metadata=md)


async def everything(stub: Stub, md: Any, page_size: int = 500, start: str = "", **filters: Any) -> list[pb.Contact]:
    out: list[pb.Contact] = []
    token = start
    while True:
        page = await stub.ListContacts(
            pb.ListContactsRequest(page_size=page_size, page_token=token, **filters), metadata=md
        )
        out.extend(page.contacts)
        token = page.next_page_token
        if not token:
            return out


async def names(stub: Stub, md: Any, **filters: Any) -> set[str]:
    return {c.display_name for c in await everything(stub, md, **filters)}


@pytest.fixture(scope="module")
async def people(stub: Stub, token_issuer: TokenIssuer) -> dict[str, pb.Contact]:
    md, other = token_issuer.metadata(TENANT), token_issuer.metadata(OTHER)
    alibaba = await stub.CreateAccount(
        pb.CreateAccountRequest(account=pb.Account(name="阿里巴巴网络技术")), metadata=md
    )
    globex = await stub.CreateAccount(
        pb.CreateAccountRequest(account=pb.Account(name="Globex Corporation")), metadata=md
    )
    specs: dict[str, dict[str, Any]] = {
        "欧阳娜娜": dict(
            first_name="娜娜",
            last_name="欧阳",
            email="nana.ouyang@example.cn",
            phone="138 0013 8000",
            tags=["vip", "北京"],
            owner_id=ALICE,
            classification="core",
            lifecycle_stage="customer",
            source="web",
            account_id=alibaba.id,
        ),
        "王小明": dict(
            first_name="小明",
            last_name="王",
            email="xm.wang@qq.com",
            phone="010 6552 9988",
            tags=["vip"],
            owner_id=BOB,
            classification="potential",
            lifecycle_stage="lead",
            source="referral",
        ),
        "Ada Lovelace": dict(
            first_name="Ada",
            last_name="Lovelace",
            email="ada@analytical.engine",
            phone="+44 20 7946 0958",
            tags=["北京"],
            owner_id=ALICE,
            classification="general",
            lifecycle_stage="prospect",
            source="event",
            account_id=globex.id,
        ),
        "Grace Hopper": dict(
            first_name="Grace",
            last_name="Hopper",
            emails=[pb.ContactEmail(address="grace@navy.mil"), pb.ContactEmail(address="cobol@hopper.dev")],
            owner_id=BOB,
            classification="core",
            lifecycle_stage="loyal",
            source="web",
            external_id="X-1",
        ),
    }
    out = {name: await create(stub, md, **fields) for name, fields in specs.items()}
    # The other tenant holds look-alikes of everything: none may ever match for TENANT.
    foreign = await stub.CreateAccount(
        pb.CreateAccountRequest(account=pb.Account(name="阿里巴巴网络技术")), metadata=other
    )
    for fields in specs.values():
        clone = {**fields, "account_id": foreign.id if fields.get("account_id") else ""}
        await create(stub, other, **clone)
    return out


SEARCHES = [
    ("阳娜娜", {"欧阳娜娜"}),  # Chinese substring, 3 characters
    ("欧阳", {"欧阳娜娜"}),  # 2 characters
    ("娜", {"欧阳娜娜"}),  # 1 character
    ("小明", {"王小明"}),
    ("王", {"王小明"}),
    ("ouyang@exa", {"欧阳娜娜"}),  # email fragment
    ("@QQ.COM", {"王小明"}),  # case-insensitive
    ("cobol@hop", {"Grace Hopper"}),  # any of a contact's emails
    ("0013 8000", {"欧阳娜娜"}),  # phone fragment as typed
    ("13800138000", {"欧阳娜娜"}),
    ("010-6552-9988", {"王小明"}),  # national format, with trunk prefix
    ("+86 10 6552", {"王小明"}),
    ("79460958", {"Ada Lovelace"}),
    ("巴巴网", {"欧阳娜娜"}),  # company (account name)
    ("globex", {"Ada Lovelace"}),
    ("lov", {"Ada Lovelace"}),
    ("ada lovelace", {"Ada Lovelace"}),  # every term must match
    ("lovelace hopper", set()),
    ("ad", {"Ada Lovelace"}),  # short Latin term: a word prefix
    ("\uff27\uff52\uff41\uff43\uff45", {"Grace Hopper"}),  # full-width letters
    ("nobody-here", set()),
]


@pytest.mark.parametrize(("q", "expected"), SEARCHES, ids=[q for q, _ in SEARCHES])
async def test_full_text(
    stub: Stub, token_issuer: TokenIssuer, people: dict[str, pb.Contact], q: str, expected: set[str]
) -> None:
    assert await names(stub, token_issuer.metadata(TENANT), q=q) == expected


FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"tags": ["vip"]}, {"欧阳娜娜", "王小明"}),
    ({"tags": ["vip", "北京"]}, {"欧阳娜娜"}),  # all must match
    ({"tag": "北京"}, {"欧阳娜娜", "Ada Lovelace"}),
    ({"tag": "vip", "tags": ["北京"]}, {"欧阳娜娜"}),
    ({"owner_id": ALICE}, {"欧阳娜娜", "Ada Lovelace"}),
    ({"classification": "core"}, {"欧阳娜娜", "Grace Hopper"}),
    ({"classification": "CORE", "owner_id": BOB}, {"Grace Hopper"}),
    ({"lifecycle_stage": "lead"}, {"王小明"}),
    ({"source": "web"}, {"欧阳娜娜", "Grace Hopper"}),
    ({"external_id": "X-1"}, {"Grace Hopper"}),
    ({"q": "欧阳", "tags": ["vip"], "classification": "core", "owner_id": ALICE}, {"欧阳娜娜"}),
    ({"q": "欧阳", "owner_id": BOB}, set()),
]


@pytest.mark.parametrize(("filters", "expected"), FILTERS, ids=[str(f) for f, _ in FILTERS])
async def test_structured_filters(
    stub: Stub, token_issuer: TokenIssuer, people: dict[str, pb.Contact], filters: dict[str, Any], expected: set[str]
) -> None:
    assert await names(stub, token_issuer.metadata(TENANT), **filters) == expected


async def test_time_ranges(stub: Stub, token_issuer: TokenIssuer, people: dict[str, pb.Contact]) -> None:
    md = token_issuer.metadata(TENANT)
    first, *_, last = sorted(people.values(), key=lambda c: c.create_time.ToDatetime())
    start = first.create_time.ToJsonString()
    end = last.create_time.ToJsonString()
    everyone = set(people)
    assert await names(stub, md, created_after=start) == everyone  # inclusive
    assert await names(stub, md, created_before=start) == set()  # exclusive
    just_after = first.create_time.ToDatetime().replace(tzinfo=UTC) + timedelta(microseconds=1)
    assert first.display_name not in await names(stub, md, created_after=just_after.isoformat())
    assert await names(stub, md, created_before=end) == everyone - {last.display_name}
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert await names(stub, md, created_before=tomorrow, updated_before=tomorrow) == everyone
    assert await names(stub, md, created_after=tomorrow) == set()
    # Offsets are honoured: the same instant written in Beijing time.
    later = last.update_time.ToDatetime().replace(tzinfo=UTC) + timedelta(microseconds=1)
    beijing = later.astimezone(timezone(timedelta(hours=8))).isoformat()
    assert "+08:00" in beijing
    assert await names(stub, md, updated_after=beijing) == set()
    assert await names(stub, md, updated_before=beijing) == everyone
    touched = people["王小明"]
    await asyncio.sleep(0.01)
    moment = datetime.now(UTC).isoformat()
    await stub.UpdateContact(
        pb.UpdateContactRequest(
            contact=pb.Contact(id=touched.id, job_title="经理"),
            update_mask=field_mask_pb2.FieldMask(paths=["job_title"]),
        ),
        metadata=md,
    )
    assert await names(stub, md, updated_after=moment) == {"王小明"}


BAD_FILTERS: list[tuple[dict[str, Any], str]] = [
    ({"classification": "vip"}, "classification"),
    ({"lifecycle_stage": "dead"}, "lifecycle_stage"),
    ({"owner_id": "not an id"}, "owner_id"),
    ({"created_after": "yesterday"}, "created_after"),
    ({"created_before": "2025-01-31T08:00:00"}, "created_before"),  # no offset
    ({"updated_after": "2025-13-01"}, "updated_after"),
    ({"updated_before": "soon"}, "updated_before"),
    ({"order_by": "password"}, "order_by"),
    ({"order_by": "last_name,last_name"}, "order_by"),
    ({"order_by": "--last_name"}, "order_by"),
    ({"order_by": "a,b,c,d"}, "order_by"),
    ({"q": "x" * 201}, "q"),
    ({"tags": ["x" * 51]}, "tags[0]"),
    ({"page_size": 501}, "page_size"),
    ({"page_token": "not-a-token"}, "page_token"),
]


@pytest.mark.parametrize(("filters", "field"), BAD_FILTERS, ids=[f for _, f in BAD_FILTERS])
async def test_bad_filters_name_their_field(
    stub: Stub, token_issuer: TokenIssuer, filters: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListContacts(pb.ListContactsRequest(**filters), metadata=token_issuer.metadata(TENANT))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value), violations(err.value)


def _key(c: pb.Contact, name: str) -> Any:
    value = getattr(c, name)
    return value.ToDatetime() if name.endswith("_time") else value


@pytest.mark.parametrize(
    "order_by",
    ["last_name", "-last_name", "create_time", "-update_time", "last_name,-first_name", "-classification,email"],
)
async def test_sort_orders_paginate_stably_over_equal_keys(
    stub: Stub, token_issuer: TokenIssuer, order_by: str
) -> None:
    md = token_issuer.metadata("t-sort-" + "".join(ch if ch.isalnum() else "_" for ch in order_by))
    created = set()
    for i in range(23):
        c = await create(
            stub,
            md,
            first_name=f"F{i % 3}",
            last_name="Same" if i % 2 else "Other",  # many equal keys
            classification=("core", "general")[i % 2],
            email=f"p{i % 4}x{i}@example.com",
        )
        created.add(c.id)
    seen = await everything(stub, md, page_size=4, order_by=order_by)
    assert len(seen) == len({c.id for c in seen}) == 23 and {c.id for c in seen} == created
    keys = [(name.lstrip("-"), name.startswith("-")) for name in order_by.split(",")]

    def sort_tuple(c: pb.Contact) -> tuple[Any, ...]:
        return tuple(_key(c, name) for name, _ in keys)

    expected = list(seen)
    for name, desc in reversed(keys):
        expected.sort(key=lambda c, n=name: _key(c, n), reverse=desc)  # stable sorts, last key first
    assert [sort_tuple(c) for c in seen] == [sort_tuple(c) for c in expected]
    # Ties are broken by id, in the direction of the last key.
    for a, b in itertools.pairwise(seen):
        if sort_tuple(a) == sort_tuple(b):
            assert (a.id > b.id) if keys[-1][1] else (a.id < b.id)
    # Default: newest first.
    default = await everything(stub, md, page_size=5)
    assert [c.id for c in default] == sorted(created, reverse=True)
    # A token belongs to its order and filters.
    page = await stub.ListContacts(pb.ListContactsRequest(page_size=2, order_by=order_by), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListContacts(
            pb.ListContactsRequest(page_size=2, page_token=page.next_page_token, order_by="email"), metadata=md
        )
    assert "page_token" in violations(err.value)


async def test_pages_neither_repeat_nor_skip_while_rows_change(stub: Stub, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-sort-live")
    for i in range(12):
        await create(stub, md, last_name="Equal", first_name=str(i))
    first = await stub.ListContacts(pb.ListContactsRequest(page_size=5, order_by="last_name"), metadata=md)
    inserted = await create(stub, md, last_name="Aaa")  # sorts before everything already paged
    rest = await everything(stub, md, page_size=5, order_by="last_name", start=first.next_page_token)
    ids = [c.id for c in first.contacts] + [c.id for c in rest]
    assert len(ids) == len(set(ids)) == 12 and inserted.id not in ids


async def test_the_index_follows_every_write(stub: Stub, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-search-writes")
    acct = await stub.CreateAccount(pb.CreateAccountRequest(account=pb.Account(name="腾讯科技")), metadata=md)
    c = await create(stub, md, first_name="三", last_name="张", email="zs@old.cn", tags=["老客户"], account_id=acct.id)
    assert await names(stub, md, q="腾讯") == {"张三"}

    def change(contact: pb.Contact, *paths: str) -> Any:
        return stub.UpdateContact(
            pb.UpdateContactRequest(contact=contact, update_mask=field_mask_pb2.FieldMask(paths=list(paths))),
            metadata=md,
        )

    await change(pb.Contact(id=c.id, last_name="李", email="ls@new.cn", tags=["新客户"]), "last_name", "email", "tags")
    assert await names(stub, md, q="张三") == set()
    assert await names(stub, md, q="李三") == await names(stub, md, q="new.cn") == {"李三"}
    assert await names(stub, md, q="old.cn") == set()
    assert await names(stub, md, tags=["老客户"]) == set()
    assert await names(stub, md, tags=["新客户"]) == {"李三"}
    # Renaming the account re-indexes its contacts.
    await stub.UpdateAccount(
        pb.UpdateAccountRequest(
            account=pb.Account(id=acct.id, name="微信支付"), update_mask=field_mask_pb2.FieldMask(paths=["name"])
        ),
        metadata=md,
    )
    assert await names(stub, md, q="腾讯") == set()
    assert await names(stub, md, q="微信") == {"李三"}
    # Moving to no account drops the company.
    await change(pb.Contact(id=c.id, account_id=""), "account_id")
    assert await names(stub, md, q="微信") == set()
    await stub.DeleteContact(pb.DeleteContactRequest(id=c.id), metadata=md)
    assert await names(stub, md, q="李三") == set()
    assert await names(stub, md, tags=["新客户"]) == set()


async def test_other_tenants_never_match(stub: Stub, token_issuer: TokenIssuer, people: dict[str, pb.Contact]) -> None:
    other = token_issuer.metadata(OTHER)
    ours = {c.id for c in people.values()}
    seen: set[str] = set()
    for q, _ in SEARCHES:
        seen |= {c.id for c in await everything(stub, other, q=q)}
    for filters, _ in FILTERS:
        seen |= {c.id for c in await everything(stub, other, **filters)}
    assert seen and not seen & ours  # the other tenant finds its own look-alikes, never ours
    lonely = token_issuer.metadata("t-search-empty")
    for q, _ in SEARCHES:
        assert await everything(stub, lonely, q=q) == []


async def test_members_search_only_their_own(
    stub: Stub, token_issuer: TokenIssuer, people: dict[str, pb.Contact]
) -> None:
    alice = token_issuer.metadata(TENANT, subject=ALICE, roles=("member",))
    assert await names(stub, alice) == {"欧阳娜娜", "Ada Lovelace"}
    assert await names(stub, alice, q="王") == set()
    assert await names(stub, alice, tags=["vip"]) == {"欧阳娜娜"}
