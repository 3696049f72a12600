"""Filtering and sorting contacts and accounts by custom fields over real gRPC: every type with every operator
it takes, invalid conditions named `custom_filter[i]`, page tokens bound to the conditions, and a stable sort
on `custom.<key>` whose pages neither repeat nor skip records that share a value."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import event

from crm.customer.v1 import custom_fields_pb2 as cf
from crm.customer.v1 import custom_fields_pb2_grpc, customer_pb2_grpc
from crm.customer.v1 import customer_pb2 as pb
from crm_customer import custom_field_search, search
from crm_customer.app import SPEC
from crm_kit.context import Principal, tenant_scope
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.grpc import violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

TENANT = "t-cf-search"

# name -> custom field values; "none" has no custom values at all
PEOPLE: dict[str, dict[str, Any]] = {
    "ann": {
        "segment": "A",
        "score": 10,
        "renewal": "2026-12-31",
        "vip": True,
        "channels": ["email", "sms"],
        "note": "Likes green tea",
    },
    "bob": {
        "segment": "B",
        "score": 42.5,
        "renewal": "2027-01-01",
        "vip": False,
        "channels": ["sms"],
        "note": "100% coffee_lover",
    },
    "cai": {"segment": "A", "score": -3, "renewal": "2027-06-30", "channels": ["phone"], "note": "茶 tea"},
    "dan": {"segment": "C", "score": 10, "vip": True},
    "none": {},
}


@dataclass
class World:
    customer: customer_pb2_grpc.CustomerServiceStub
    md: tuple[tuple[str, str], ...]
    ids: dict[str, str]


@pytest.fixture(scope="module")
async def runtime(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        SPEC, database_factory.create("customer"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def world(runtime: ServiceRuntime, token_issuer: TokenIssuer) -> AsyncIterator[World]:
    md = token_issuer.metadata(TENANT)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        fields = custom_fields_pb2_grpc.CustomFieldServiceStub(channel)
        customer = customer_pb2_grpc.CustomerServiceStub(channel)
        for entity, key, kind, options in (
            ("contact", "segment", "select", ("A", "B", "C")),
            ("contact", "score", "number", ()),
            ("contact", "renewal", "date", ()),
            ("contact", "vip", "boolean", ()),
            ("contact", "channels", "multi_select", ("email", "sms", "phone")),
            ("contact", "note", "text", ()),
            ("account", "size", "number", ()),
        ):
            await fields.CreateCustomFieldDefinition(
                cf.CreateCustomFieldDefinitionRequest(
                    custom_field_definition=cf.CustomFieldDefinition(
                        entity=entity,
                        key=key,
                        label=key.title(),
                        type=kind,
                        options=[cf.CustomFieldOption(key=o) for o in options],
                    )
                ),
                metadata=md,
            )
        ids = {}
        for name, values in PEOPLE.items():
            message = pb.Contact(last_name=name)
            json_format.ParseDict({"custom_fields": values}, message)
            ids[name] = (await customer.CreateContact(pb.CreateContactRequest(contact=message), metadata=md)).id
        yield World(customer, md, ids)


async def names(world: World, *conditions: str) -> set[str]:
    page = await world.customer.ListContacts(
        pb.ListContactsRequest(page_size=500, custom_filter=list(conditions)), metadata=world.md
    )
    by_id = {v: k for k, v in world.ids.items()}
    found = [by_id[c.id] for c in page.contacts]
    assert len(found) == len(set(found)), f"a contact listed twice: {found}"  # joins must not repeat rows
    return set(found)


EVERYONE = set(PEOPLE)

CASES: list[tuple[str, set[str]]] = [
    # select
    ("segment=A", {"ann", "cai"}),
    ("segment!=A", {"bob", "dan", "none"}),
    ("segment=", {"none"}),
    ("segment!=", {"ann", "bob", "cai", "dan"}),
    # number
    ("score=10", {"ann", "dan"}),
    ("score!=10", {"bob", "cai", "none"}),
    ("score<10", {"cai"}),
    ("score<=10", {"ann", "cai", "dan"}),
    ("score>10", {"bob"}),
    ("score>=10", {"ann", "bob", "dan"}),
    ("score>=-3.0", {"ann", "bob", "cai", "dan"}),
    ("score > 1e1", {"bob"}),
    # date
    ("renewal=2027-01-01", {"bob"}),
    ("renewal!=2027-01-01", {"ann", "cai", "dan", "none"}),
    ("renewal<2027-01-01", {"ann"}),
    ("renewal<=2027-01-01", {"ann", "bob"}),
    ("renewal>2027-01-01", {"cai"}),
    ("renewal>=2027-01-01", {"bob", "cai"}),
    ("renewal=", {"dan", "none"}),
    # boolean
    ("vip=true", {"ann", "dan"}),
    ("vip=FALSE", {"bob"}),
    ("vip!=true", {"bob", "cai", "none"}),
    # multi_select: contains / does not contain
    ("channels=email", {"ann"}),
    ("channels=sms", {"ann", "bob"}),
    ("channels!=sms", {"cai", "dan", "none"}),
    ("channels!=", {"ann", "bob", "cai"}),
    # text
    ("note=Likes green tea", {"ann"}),
    ("note!=Likes green tea", {"bob", "cai", "dan", "none"}),
    ("note~TEA", {"ann", "cai"}),
    ("note~茶", {"cai"}),
    ("note~100%", {"bob"}),  # % and _ are literal, not wildcards
    ("note~e_l", {"bob"}),
    ("note~%", {"bob"}),
    ("note<M", {"ann", "bob"}),
    ("note>=L", {"ann", "cai"}),
]


@pytest.fixture(params=["few", "many"])
def plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a condition runs: its matching ids listed ("few"), or a per-record probe / an IN over the
    value index ("many", forced by a matching-set bound of 0; the service runs in this process)."""
    if request.param == "many":
        monkeypatch.setattr(custom_field_search, "SMALL_SET", 0)
    return str(request.param)


@pytest.mark.parametrize(("condition", "expected"), CASES, ids=[c for c, _ in CASES])
async def test_every_type_and_operator_filters_in_sql(
    world: World, plan: str, condition: str, expected: set[str]
) -> None:
    assert await names(world, condition) == expected
    # the same under a custom sort, where a large matching set is read from the value index instead
    page = await world.customer.ListContacts(
        pb.ListContactsRequest(page_size=500, custom_filter=[condition], order_by="-custom.score"), metadata=world.md
    )
    by_id = {v: k for k, v in world.ids.items()}
    assert sorted(by_id[c.id] for c in page.contacts) == sorted(expected)


async def test_conditions_combine_with_each_other_and_built_in_filters(world: World, plan: str) -> None:
    assert await names(world, "segment=A", "score>=0") == {"ann"}
    assert await names(world, "vip=true", "channels!=email", "renewal=") == {"dan"}
    assert await names(world, "segment=A", "segment=B") == set()
    page = await world.customer.ListContacts(
        pb.ListContactsRequest(custom_filter=["segment=A"], q="cai"), metadata=world.md
    )
    assert [c.id for c in page.contacts] == [world.ids["cai"]]


INVALID = [
    "segment",  # no operator
    "=A",  # no key
    "Segment=A",  # keys are snake_case
    "unknown=1",
    "score>=abc",
    "score=1,5",
    "score<nan",
    "renewal<2027-13-01",
    "renewal>31/12/2027",
    "vip=yes",
    "vip<true",
    "segment=Z",  # not an option
    "segment<A",
    "channels~ema",
    "channels=fax",
    "score~1",
    "renewal~2027",
    "score<",
    "note~",
    "note=" + "x" * 601,
]


@pytest.mark.parametrize("condition", INVALID)
async def test_invalid_conditions_are_named(world: World, condition: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.customer.ListContacts(
            pb.ListContactsRequest(custom_filter=["segment=A", condition]), metadata=world.md
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"custom_filter[1]"}


async def test_every_invalid_condition_is_reported_at_once(world: World) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.customer.ListContacts(
            pb.ListContactsRequest(custom_filter=["score>x", "segment=A", "nope=1"]), metadata=world.md
        )
    assert set(violations(err.value)) == {"custom_filter[0]", "custom_filter[2]"}


async def test_pages_of_a_filtered_list_are_complete_and_bound_to_the_filter(world: World) -> None:
    seen: list[str] = []
    token = ""
    while True:
        page = await world.customer.ListContacts(
            pb.ListContactsRequest(page_size=1, page_token=token, custom_filter=["score>=0"]), metadata=world.md
        )
        seen.extend(c.id for c in page.contacts)
        token = page.next_page_token
        if not token:
            break
        last = token
    assert sorted(seen) == sorted(world.ids[n] for n in ("ann", "bob", "dan"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.customer.ListContacts(
            pb.ListContactsRequest(page_size=1, page_token=last, custom_filter=["score>=1"]), metadata=world.md
        )
    assert "page_token" in violations(err.value)


async def test_accounts_filter_by_their_own_fields(world: World, plan: str) -> None:
    made = {}
    for name, size in (("Big", 5000), ("Small", 12), ("Unknown", None)):
        account = pb.Account(name=name)
        if size is not None:
            json_format.ParseDict({"custom_fields": {"size": size}}, account)
        made[name] = (
            await world.customer.CreateAccount(pb.CreateAccountRequest(account=account), metadata=world.md)
        ).id

    async def matching(condition: str) -> set[str]:
        page = await world.customer.ListAccounts(
            pb.ListAccountsRequest(page_size=500, custom_filter=[condition]), metadata=world.md
        )
        return {name for name, id_ in made.items() if id_ in {a.id for a in page.accounts}}

    assert await matching("size>100") == {"Big"}
    assert await matching("size<=12") == {"Small"}
    assert await matching("size=") == {"Unknown"}
    assert await matching("size!=") == {"Big", "Small"}
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a contact field is not an account field
        await world.customer.ListAccounts(pb.ListAccountsRequest(custom_filter=["segment=A"]), metadata=world.md)
    assert set(violations(err.value)) == {"custom_filter[0]"}


# --- sorting ------------------------------------------------------------------------------------------

SORT_TENANT = "t-cf-sort"
SORT_FIELDS = (
    ("rank", "number", ()),
    ("tier", "select", ("gold", "silver", "bronze")),
    ("due", "date", ()),
    ("flag", "boolean", ()),
    ("label", "text", ()),
)


def sort_values(i: int) -> dict[str, Any]:
    """Few distinct values, many records sharing each, and some records without one."""
    values: dict[str, Any] = {}
    if i % 7 != 3:
        values["rank"] = [2.5, -1, 10][i % 3]
    if i % 5 != 1:
        values["tier"] = ["gold", "silver", "bronze"][i % 3]
    if i % 6 != 2:
        values["due"] = ["2027-01-31", "2026-05-01"][i % 2]
    if i % 4 != 0:
        values["flag"] = i % 3 == 0
    if i % 8 != 5:
        values["label"] = ["beta", "alpha", "gamma", "alpha"][i % 4]
    return values


@pytest.fixture(scope="module")
async def sorted_world(runtime: ServiceRuntime, token_issuer: TokenIssuer) -> AsyncIterator[World]:
    md = token_issuer.metadata(SORT_TENANT)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        fields = custom_fields_pb2_grpc.CustomFieldServiceStub(channel)
        customer = customer_pb2_grpc.CustomerServiceStub(channel)
        for key, kind, options in (*SORT_FIELDS, ("many", "multi_select", ("x", "y"))):
            await fields.CreateCustomFieldDefinition(
                cf.CreateCustomFieldDefinitionRequest(
                    custom_field_definition=cf.CustomFieldDefinition(
                        entity="contact",
                        key=key,
                        label=key,
                        type=kind,
                        options=[cf.CustomFieldOption(key=o) for o in options],
                    )
                ),
                metadata=md,
            )
        ids = {}
        for i in range(30):
            message = pb.Contact(last_name=f"S{i:02d}")
            json_format.ParseDict({"custom_fields": sort_values(i)}, message)
            ids[str(i)] = (await customer.CreateContact(pb.CreateContactRequest(contact=message), metadata=md)).id
        yield World(customer, md, ids)


async def all_pages(world: World, order_by: str, page_size: int = 4, **filters: Any) -> list[str]:
    seen: list[str] = []
    token = ""
    while True:
        page = await world.customer.ListContacts(
            pb.ListContactsRequest(order_by=order_by, page_size=page_size, page_token=token, **filters),
            metadata=world.md,
        )
        seen.extend(c.id for c in page.contacts)
        token = page.next_page_token
        if not token:
            return seen


@pytest.mark.parametrize("key", [k for k, _, _ in SORT_FIELDS])
async def test_sorting_by_a_custom_field_pages_through_equal_values(sorted_world: World, key: str) -> None:
    def sort_key(i: int) -> tuple[int, Any, str]:
        value = sort_values(i).get(key)
        return (1, "", sorted_world.ids[str(i)]) if value is None else (0, value, sorted_world.ids[str(i)])

    expected = [sorted_world.ids[str(i)] for i in sorted(range(30), key=sort_key)]
    ascending = await all_pages(sorted_world, f"custom.{key}")
    assert ascending == expected  # no record repeated or skipped; ties broken by id; no value last
    descending = await all_pages(sorted_world, f"-custom.{key}", page_size=7)
    assert descending == expected[::-1]


async def test_custom_sort_combines_with_filters_and_built_in_keys(sorted_world: World, plan: str) -> None:
    gold = [i for i in range(30) if sort_values(i).get("tier") == "gold"]
    by_rank_then_name = sorted(
        gold, key=lambda i: ("rank" not in sort_values(i), sort_values(i).get("rank", 0), f"S{i:02d}")
    )
    got = await all_pages(sorted_world, "custom.rank,last_name", page_size=2, custom_filter=["tier=gold"])
    assert got == [sorted_world.ids[str(i)] for i in by_rank_then_name]


@pytest.mark.parametrize("order_by", ["custom.many", "custom.nope", "custom.", "-custom.Rank"])
async def test_unsortable_custom_keys_are_named(sorted_world: World, order_by: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sorted_world.customer.ListContacts(pb.ListContactsRequest(order_by=order_by), metadata=sorted_world.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"order_by"}


async def test_a_page_token_is_bound_to_the_custom_order(sorted_world: World) -> None:
    page = await sorted_world.customer.ListContacts(
        pb.ListContactsRequest(order_by="custom.rank", page_size=3), metadata=sorted_world.md
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sorted_world.customer.ListContacts(
            pb.ListContactsRequest(order_by="custom.due", page_size=3, page_token=page.next_page_token),
            metadata=sorted_world.md,
        )
    assert set(violations(err.value)) == {"page_token"}


MEMBER = "0190a5f2-0000-7000-8000-00000000a001"
OTHER = "0190a5f2-0000-7000-8000-00000000a002"


async def test_a_custom_order_read_from_the_value_index_equals_the_sorted_query(
    runtime: ServiceRuntime, token_issuer: TokenIssuer
) -> None:
    # A page of `custom.<key>` alone is read from the value index (custom_field_search.contact_page); the
    # export path still sorts the coalesced value (search.contact_query). Walking every page, in both
    # directions and with every kind of filter, gives exactly that order.
    tenant = "t-cf-index-order"
    admin = token_issuer.metadata(tenant)
    member = token_issuer.metadata(tenant, subject=MEMBER, roles=("member",))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        fields = custom_fields_pb2_grpc.CustomFieldServiceStub(channel)
        customer = customer_pb2_grpc.CustomerServiceStub(channel)
        for key, kind, options in SORT_FIELDS:
            definition = cf.CustomFieldDefinition(
                entity="contact", key=key, label=key, type=kind, options=[cf.CustomFieldOption(key=o) for o in options]
            )
            await fields.CreateCustomFieldDefinition(
                cf.CreateCustomFieldDefinitionRequest(custom_field_definition=definition), metadata=admin
            )
        for i in range(45):
            message = pb.Contact(last_name=("Zhou" if i % 3 else "Qian") + f"{i:02d}", owner_id=(MEMBER, OTHER)[i % 2])
            json_format.ParseDict({"custom_fields": sort_values(i)}, message)
            await customer.CreateContact(pb.CreateContactRequest(contact=message), metadata=admin)
        world = World(customer, admin, {})
        member_world = World(customer, member, {})
        principals = {
            id(world): Principal(subject="user-1", tenant_id=tenant, roles=("admin",)),
            id(member_world): Principal(subject=MEMBER, tenant_id=tenant, roles=("member",)),
        }

        async def reference(w: World, order_by: str, **filters: Any) -> list[str]:
            request = SimpleNamespace(order_by=order_by, **filters)
            with tenant_scope(tenant):
                async with runtime.db.transaction() as session:
                    stmt = await search.contact_query(session, request, principals[id(w)])
                    return [c.id for c in (await session.execute(stmt)).scalars()]

        cases: list[tuple[World, dict[str, Any]]] = [
            (world, {}),
            (member_world, {}),
            (world, {"q": "zhou"}),
            (member_world, {"q": "qian"}),
            (world, {"custom_filter": ["tier=gold"]}),
            (member_world, {"custom_filter": ["rank>=0"], "q": "zhou"}),
        ]
        for key, _, _ in SORT_FIELDS:
            for w, filters in cases:
                for order_by, page_size in ((f"custom.{key}", 4), (f"-custom.{key}", 5)):
                    expected = await reference(w, order_by, **filters)
                    got = await all_pages(w, order_by, page_size=page_size, **filters)
                    assert got == expected, (order_by, filters)
                    assert len(set(got)) == len(got) and got, (order_by, filters)


async def test_a_list_reads_the_definitions_once(world: World, runtime: ServiceRuntime) -> None:
    """The sort, the filters and the pager of one request share one read of the tenant's definitions."""
    reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM custom_field_definitions" in statement:
            reads.append(statement)

    engine = runtime.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        page = await world.customer.ListContacts(
            pb.ListContactsRequest(custom_filter=["score>=0", "vip=true"], order_by="custom.score"), metadata=world.md
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [c.id for c in page.contacts] == [world.ids["ann"], world.ids["dan"]]
    assert len(reads) == 1, reads
