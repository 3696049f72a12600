"""The complete customer record over a real gRPC channel, on SQLite and PostgreSQL: every field round-trips
(Chinese text included) and is normalised, every rule names its field, one primary per list mirrored at the
top level, display names, accounts and the account-to-contacts relation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from crm.customer.v1 import customer_pb2 as pb
from crm.customer.v1 import customer_pb2_grpc
from crm_customer.app import SPEC
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.grpc import mask, violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

Stub = customer_pb2_grpc.CustomerServiceStub
OWNER = "7f000000-0000-7000-8000-000000000007"


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        SPEC, database_factory.create("record"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def stub(customer: ServiceRuntime) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as channel:
        yield customer_pb2_grpc.CustomerServiceStub(channel)


async def create(stub: Stub, md: Any, **fields: Any) -> pb.Contact:
    fields.setdefault("last_name", "测试")
    return await stub.CreateContact(pb.CreateContactRequest(contact=pb.Contact(**fields)), metadata=md)


async def update(stub: Stub, md: Any, contact: pb.Contact, *paths: str) -> pb.Contact:
    return await stub.UpdateContact(pb.UpdateContactRequest(contact=contact, update_mask=mask(*paths)), metadata=md)


FULL = dict(
    first_name=" 伟 ",
    last_name="张",
    gender="Male",
    birthday="1988-08-08",
    job_title="  销售   总监 ",
    department="华东区",
    phones=[
        pb.ContactPhone(type="mobile", number="138 0013 8000"),
        pb.ContactPhone(type="work", number="010 6552 9988", primary=True),
        pb.ContactPhone(number="+1 415 555 0132"),
    ],
    emails=[pb.ContactEmail(type="work", address=" Wei.Zhang@Example.COM "), pb.ContactEmail(address="wz@qq.com")],
    addresses=[
        pb.Address(
            type="home", street="朝阳区 建国路88号", city="北京", region="北京市", postal_code="100022", country="cn"
        ),
        pb.Address(type="work", city="上海", country="CN", primary=True),
    ],
    social_accounts=[
        pb.SocialAccount(platform="WeChat", handle="zhangwei_88"),
        pb.SocialAccount(platform="x", handle="zw"),
    ],
    preferences=[pb.Preference(key="联系时间", value="晚上"), pb.Preference(key="language", value="zh-CN")],
    interests=["高尔夫", " 红酒 ", "高尔夫"],
    tags=["重要客户"],
    source=" Web ",
    classification="CORE",
    lifecycle_stage="customer",
    external_id=" ERP-0001 ",
)


async def test_every_field_round_trips_normalised(stub: Stub, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-rec-full")
    c = await create(stub, md, **FULL)
    assert (c.first_name, c.last_name, c.display_name) == ("伟", "张", "张伟")
    assert (c.gender, c.birthday, c.job_title, c.department) == ("male", "1988-08-08", "销售 总监", "华东区")
    assert [(p.type, p.number, p.primary) for p in c.phones] == [
        ("mobile", "+8613800138000", False),
        ("work", "+861065529988", True),
        ("other", "+14155550132", False),
    ]
    assert c.phone == "+861065529988"
    assert [(e.type, e.address, e.primary) for e in c.emails] == [
        ("work", "wei.zhang@example.com", True),
        ("other", "wz@qq.com", False),
    ]
    assert c.email == "wei.zhang@example.com"
    home, work = c.addresses
    assert (home.type, home.street, home.city, home.region, home.postal_code, home.country, home.primary) == (
        "home",
        "朝阳区 建国路88号",
        "北京",
        "北京市",
        "100022",
        "CN",
        False,
    )
    assert (work.type, work.city, work.primary) == ("work", "上海", True)
    assert [(s.platform, s.handle) for s in c.social_accounts] == [("wechat", "zhangwei_88"), ("x", "zw")]
    assert [(p.key, p.value) for p in c.preferences] == [("联系时间", "晚上"), ("language", "zh-CN")]
    assert list(c.interests) == ["高尔夫", "红酒"]
    assert (c.source, c.classification, c.lifecycle_stage, c.external_id) == ("web", "core", "customer", "ERP-0001")

    got = await stub.GetContact(pb.GetContactRequest(id=c.id), metadata=md)
    assert got == c
    listed = await stub.ListContacts(pb.ListContactsRequest(external_id="ERP-0001"), metadata=md)
    assert list(listed.contacts) == [c]

    changed = await update(
        stub,
        md,
        pb.Contact(id=c.id, job_title="总经理", interests=["围棋"], preferences=[], gender="", department=""),
        "job_title",
        "interests",
        "preferences",
        "gender",
        "department",
    )
    assert (changed.job_title, list(changed.interests), list(changed.preferences)) == ("总经理", ["围棋"], [])
    assert (changed.gender, changed.department, changed.version) == ("unknown", "", 2)
    assert list(changed.phones) == list(c.phones) and changed.email == c.email


async def test_defaults(stub: Stub, token_issuer: TokenIssuer) -> None:
    c = await create(stub, token_issuer.metadata("t-rec-defaults"), first_name="Ada", last_name="Lovelace")
    assert (c.gender, c.classification, c.lifecycle_stage, c.display_name) == (
        "unknown",
        "general",
        "lead",
        "Ada Lovelace",
    )
    assert (list(c.phones), list(c.emails), c.birthday, c.external_id) == ([], [], "", "")


BAD: list[tuple[dict[str, Any], str]] = [
    ({"gender": "robot"}, "gender"),
    ({"birthday": "2999-01-01"}, "birthday"),
    ({"birthday": "1990-02-30"}, "birthday"),
    ({"job_title": "长" * 101}, "job_title"),
    ({"department": "x" * 101}, "department"),
    ({"source": "s" * 51}, "source"),
    ({"classification": "vip"}, "classification"),
    ({"lifecycle_stage": "dead"}, "lifecycle_stage"),
    ({"external_id": "e" * 101}, "external_id"),
    ({"phones": [pb.ContactPhone(number="+8613800138000"), pb.ContactPhone(number="12")]}, "phones[1].number"),
    ({"phones": [pb.ContactPhone(number="")]}, "phones[0].number"),
    ({"phones": [pb.ContactPhone(type="pager", number="+8613800138000")]}, "phones[0].type"),
    (
        {"phones": [pb.ContactPhone(number="138 0013 8000"), pb.ContactPhone(number="+86 138 0013 8000")]},
        "phones[1].number",
    ),
    (
        {
            "phones": [
                pb.ContactPhone(number="+8613800138000", primary=True),
                pb.ContactPhone(number="+861065529988", primary=True),
            ]
        },
        "phones[1].primary",
    ),
    ({"emails": [pb.ContactEmail(address="nope@")]}, "emails[0].address"),
    ({"emails": [pb.ContactEmail(type="home", address="a@b.cn")]}, "emails[0].type"),
    (
        {"emails": [pb.ContactEmail(address="a@b.cn", primary=True), pb.ContactEmail(address="c@d.cn", primary=True)]},
        "emails[1].primary",
    ),
    ({"emails": [pb.ContactEmail(address="a@b.cn")], "email": "other@b.cn"}, "email"),
    ({"addresses": [pb.Address(city="北京", country="XX")]}, "addresses[0].country"),
    ({"addresses": [pb.Address(type="home")]}, "addresses[0]"),
    ({"addresses": [pb.Address(type="moon", city="x")]}, "addresses[0].type"),
    (
        {"addresses": [pb.Address(city="a", primary=True), pb.Address(city="b", primary=True)]},
        "addresses[1].primary",
    ),
    ({"social_accounts": [pb.SocialAccount(platform="myspace", handle="a")]}, "social_accounts[0].platform"),
    ({"social_accounts": [pb.SocialAccount(platform="weibo", handle=" ")]}, "social_accounts[0].handle"),
    ({"preferences": [pb.Preference(key="k", value="1"), pb.Preference(key="k", value="2")]}, "preferences[1].key"),
    ({"preferences": [pb.Preference(key="", value="1")]}, "preferences[0].key"),
    ({"interests": ["a,b"]}, "interests[0]"),
    ({"account_id": "0190a5f2-0000-7000-8000-000000000000"}, "account_id"),
    ({"first_name": "", "last_name": ""}, "last_name"),
]


@pytest.mark.parametrize(("fields", "field"), BAD, ids=[f for _, f in BAD])
async def test_every_rule_names_its_field(
    stub: Stub, token_issuer: TokenIssuer, fields: dict[str, Any], field: str
) -> None:
    md = token_issuer.metadata("t-rec-bad")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, md, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value), violations(err.value)
    assert (await stub.ListContacts(pb.ListContactsRequest(), metadata=md)).contacts == []


async def test_external_id_is_unique_per_tenant(stub: Stub, token_issuer: TokenIssuer) -> None:
    a, b = token_issuer.metadata("t-rec-ext-a"), token_issuer.metadata("t-rec-ext-b")
    first = await create(stub, a, external_id="CRM-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, a, external_id="CRM-1")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "external_id" in violations(err.value)
    other = await create(stub, a, external_id="CRM-2")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(stub, a, pb.Contact(id=other.id, external_id="CRM-1"), "external_id")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # The same id in another tenant, and re-saving a contact's own id, are fine.
    assert (await create(stub, b, external_id="CRM-1")).external_id == "CRM-1"
    assert (
        await update(stub, a, pb.Contact(id=first.id, external_id="CRM-1", job_title="x"), "external_id", "job_title")
    ).version == 2
    # Empty ids never collide.
    await create(stub, a)
    await create(stub, a)


async def test_primary_rules(stub: Stub, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-rec-primary")
    # None marked: the first becomes primary and is mirrored.
    c = await create(stub, md, emails=[pb.ContactEmail(address="one@a.cn"), pb.ContactEmail(address="two@a.cn")])
    assert [e.primary for e in c.emails] == [True, False] and c.email == "one@a.cn"
    # Writing `email` alone (legacy clients) keeps the list: an existing address becomes primary...
    c = await update(stub, md, pb.Contact(id=c.id, email="TWO@a.cn"), "email")
    assert c.email == "two@a.cn" and [(e.address, e.primary) for e in c.emails] == [
        ("one@a.cn", False),
        ("two@a.cn", True),
    ]
    # ...a new one replaces the primary entry...
    c = await update(stub, md, pb.Contact(id=c.id, email="three@a.cn"), "email")
    assert [(e.address, e.primary) for e in c.emails] == [("one@a.cn", False), ("three@a.cn", True)]
    # ...and clearing it promotes the next one.
    c = await update(stub, md, pb.Contact(id=c.id, email=""), "email")
    assert c.email == "one@a.cn" and [(e.address, e.primary) for e in c.emails] == [("one@a.cn", True)]
    # Writing the list moves the mirror.
    c = await update(
        stub,
        md,
        pb.Contact(
            id=c.id, emails=[pb.ContactEmail(address="x@a.cn"), pb.ContactEmail(address="y@a.cn", primary=True)]
        ),
        "emails",
    )
    assert c.email == "y@a.cn"
    # `phone` alone on a contact without phones starts the list, typed by the number.
    c = await update(stub, md, pb.Contact(id=c.id, phone="13800138000"), "phone")
    assert c.phone == "+8613800138000"
    assert [(p.type, p.number, p.primary) for p in c.phones] == [("mobile", "+8613800138000", True)]
    # Both written: the top-level value picks the primary entry when none is marked.
    c = await update(
        stub,
        md,
        pb.Contact(
            id=c.id,
            phone="+861065529988",
            phones=[pb.ContactPhone(number="+8613800138000"), pb.ContactPhone(number="+861065529988")],
        ),
        "phone",
        "phones",
    )
    assert c.phone == "+861065529988" and [p.primary for p in c.phones] == [False, True]
    # An empty list clears the mirror.
    c = await update(stub, md, pb.Contact(id=c.id), "phones")
    assert (c.phone, list(c.phones)) == ("", [])


async def test_updates_name_the_bad_field(stub: Stub, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-rec-upd-bad")
    c = await create(stub, md, first_name="A", last_name="B")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(stub, md, pb.Contact(id=c.id, first_name="", last_name=""), "first_name", "last_name")
    assert "last_name" in violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(
            stub,
            md,
            pb.Contact(id=c.id, emails=[pb.ContactEmail(address="a@b.cn", primary=True)], email="c@d.cn"),
            "emails",
            "email",
        )
    assert "email" in violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(stub, md, pb.Contact(id=c.id, display_name="X"), "display_name")
    assert "update_mask" in violations(err.value)
    assert (await stub.GetContact(pb.GetContactRequest(id=c.id), metadata=md)).version == 1


async def test_display_names(stub: Stub, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-rec-display")
    cases = [
        (("娜娜", "欧阳"), "欧阳娜娜"),
        (("", "王"), "王"),
        (("Ada", "Lovelace"), "Ada Lovelace"),
        (("花子", "山田"), "山田花子"),
        (("민준", "김"), "김민준"),
        (("", "Hopper"), "Hopper"),
    ]
    for (first, last), expected in cases:
        assert (await create(stub, md, first_name=first, last_name=last)).display_name == expected


async def test_accounts_hold_the_new_fields_and_count_their_contacts(stub: Stub, token_issuer: TokenIssuer) -> None:
    md, other = token_issuer.metadata("t-rec-acct"), token_issuer.metadata("t-rec-acct-other")
    a = await stub.CreateAccount(
        pb.CreateAccountRequest(
            account=pb.Account(
                name="阿里巴巴网络技术有限公司",
                phone="0571 8502 2088",
                owner_id=OWNER,
                classification="Potential",
                tags=["战略", "杭州"],
                address=pb.Address(type="billing", street="文一西路969号", city="杭州", country="cn"),
                contact_count=99,
            )
        ),
        metadata=md,
    )
    assert (a.phone, a.owner_id, a.classification, list(a.tags)) == (
        "+8657185022088",
        OWNER,
        "potential",
        ["战略", "杭州"],
    )
    assert (a.address.city, a.address.country, a.contact_count) == ("杭州", "CN", 0)
    ids = {(await create(stub, md, first_name=f"员工{i}", account_id=a.id)).id for i in range(3)}
    await create(stub, md, first_name="散客")
    got = await stub.GetAccount(pb.GetAccountRequest(id=a.id), metadata=md)
    assert got.contact_count == 3 and got.address.street == "文一西路969号"
    listed = await stub.ListAccounts(pb.ListAccountsRequest(tag="杭州", classification="potential"), metadata=md)
    assert [x.id for x in listed.accounts] == [a.id] and listed.accounts[0].contact_count == 3
    assert (await stub.ListAccounts(pb.ListAccountsRequest(tag="北京"), metadata=md)).accounts == []
    assert (await stub.ListAccounts(pb.ListAccountsRequest(owner_id=OWNER), metadata=md)).accounts[0].id == a.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAccounts(pb.ListAccountsRequest(classification="vip"), metadata=md)
    assert "classification" in violations(err.value)
    # The account-to-contacts relation.
    members = await stub.ListContacts(pb.ListContactsRequest(account_id=a.id), metadata=md)
    assert {c.id for c in members.contacts} == ids
    # An account of another tenant, or none, cannot be referenced.
    foreign = await stub.CreateAccount(pb.CreateAccountRequest(account=pb.Account(name="Globex")), metadata=other)
    for bad in (foreign.id, "0190a5f2-0000-7000-8000-000000000000"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await create(stub, md, account_id=bad)
        assert "account_id" in violations(err.value)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await update(stub, md, pb.Contact(id=next(iter(ids)), account_id=bad), "account_id")
        assert "account_id" in violations(err.value)
    # An account with contacts is not deleted out from under them.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteAccount(pb.DeleteAccountRequest(id=a.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for cid in ids:
        await stub.DeleteContact(pb.DeleteContactRequest(id=cid), metadata=md)
    await stub.DeleteAccount(pb.DeleteAccountRequest(id=a.id), metadata=md)


BAD_ACCOUNTS: list[tuple[dict[str, Any], str]] = [
    ({"phone": "12"}, "phone"),
    ({"classification": "vip"}, "classification"),
    ({"tags": ["a,b"]}, "tags[0]"),
    ({"address": pb.Address(city="x", country="ZZ")}, "address.country"),
    ({"address": pb.Address(type="moon", city="x")}, "address.type"),
    ({"owner_id": "not an id!"}, "owner_id"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_ACCOUNTS, ids=[f for _, f in BAD_ACCOUNTS])
async def test_account_rules_name_their_field(
    stub: Stub, token_issuer: TokenIssuer, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateAccount(
            pb.CreateAccountRequest(account=pb.Account(name="X", **fields)), metadata=token_issuer.metadata("t-rec-ab")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value)
