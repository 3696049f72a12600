"""Custom fields over real gRPC: definitions are admin-only to change and readable by everyone in the tenant;
values of every type are validated on write with the field named; update masks replace the map or one key;
deleting a definition removes its values; the typed index follows every write; tenants never see or use each
other's definitions or values."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from sqlalchemy import insert, select

from crm.customer.v1 import custom_fields_pb2 as cf
from crm.customer.v1 import custom_fields_pb2_grpc, customer_pb2_grpc
from crm.customer.v1 import customer_pb2 as pb
from crm_customer.app import SPEC
from crm_customer.custom_fields import CustomFieldValue, reindex
from crm_customer.models import Contact
from crm_kit.audit import AuditEntry
from crm_kit.context import system_scope, tenant_scope
from crm_kit.db import uuid7
from crm_kit.db.system_tables import OutboxMessage
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.grpc import violations
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Stubs:
    customer: customer_pb2_grpc.CustomerServiceStub
    fields: custom_fields_pb2_grpc.CustomFieldServiceStub
    runtime: ServiceRuntime


@pytest.fixture(scope="module")
async def stubs(database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer) -> AsyncIterator[Stubs]:
    rt = await start_service(
        SPEC, database_factory.create("customer"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
        yield Stubs(
            customer_pb2_grpc.CustomerServiceStub(channel), custom_fields_pb2_grpc.CustomFieldServiceStub(channel), rt
        )
    await rt.stop()


async def fails(call: Any, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return violations(err.value) if code != grpc.StatusCode.PERMISSION_DENIED else {}


def definition(entity: str, key: str, type_: str, *options: str, required: bool = False) -> cf.CustomFieldDefinition:
    return cf.CustomFieldDefinition(
        entity=entity,
        key=key,
        label=key.replace("_", " ").title() or "Label",
        type=type_,
        options=[cf.CustomFieldOption(key=o, label=o.upper()) for o in options],
        required=required,
    )


async def define(stubs: Stubs, md: Metadata, *defs: cf.CustomFieldDefinition) -> list[cf.CustomFieldDefinition]:
    return [
        await stubs.fields.CreateCustomFieldDefinition(
            cf.CreateCustomFieldDefinitionRequest(custom_field_definition=d), metadata=md
        )
        for d in defs
    ]


def contact(last_name: str = "Li", **custom: Any) -> pb.Contact:
    message = pb.Contact(last_name=last_name)
    json_format.ParseDict({"custom_fields": custom}, message)
    return message


def plain(message: Any) -> dict[str, Any]:
    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True).get("custom_fields", {}))


async def standard_fields(stubs: Stubs, md: Metadata) -> None:
    await define(
        stubs,
        md,
        definition("contact", "segment", "select", "A", "B", "C"),
        definition("contact", "score", "number"),
        definition("contact", "renewal", "date"),
        definition("contact", "vip", "boolean"),
        definition("contact", "channels", "multi_select", "email", "sms", "phone"),
        definition("contact", "note", "text"),
    )


async def index_rows(stubs: Stubs, tenant: str, record_id: str) -> list[tuple[Any, ...]]:
    with tenant_scope(tenant):
        async with stubs.runtime.db.transaction() as session:
            v = CustomFieldValue
            rows = await session.execute(
                select(v.key, v.ordinal, v.text_value, v.number_value, v.date_value, v.bool_value)
                .where(v.record_id == record_id)
                .order_by(v.key, v.ordinal)
            )
            return [tuple(r) for r in rows]


# --- definitions --------------------------------------------------------------------------------------


async def test_only_admins_change_definitions_and_everyone_reads_them(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    tenant = "t-cf-roles"
    admin = token_issuer.metadata(tenant)
    manager = token_issuer.metadata(tenant, subject="manager-1", roles=("manager",))
    member = token_issuer.metadata(tenant, subject="member-1", roles=("member",))
    request = cf.CreateCustomFieldDefinitionRequest(custom_field_definition=definition("contact", "region", "text"))
    for md in (manager, member):
        await fails(stubs.fields.CreateCustomFieldDefinition(request, metadata=md), grpc.StatusCode.PERMISSION_DENIED)
    created = await stubs.fields.CreateCustomFieldDefinition(request, metadata=admin)
    assert (created.key, created.type, created.version, created.label) == ("region", "text", 1, "Region")
    mask = field_mask_pb2.FieldMask(paths=["label"])
    renamed = cf.CustomFieldDefinition(id=created.id, label="Sales region", label_zh="销售区域")
    for md in (manager, member):
        await fails(
            stubs.fields.UpdateCustomFieldDefinition(
                cf.UpdateCustomFieldDefinitionRequest(custom_field_definition=renamed, update_mask=mask), metadata=md
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await fails(
            stubs.fields.DeleteCustomFieldDefinition(cf.DeleteCustomFieldDefinitionRequest(id=created.id), metadata=md),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        got = await stubs.fields.GetCustomFieldDefinition(
            cf.GetCustomFieldDefinitionRequest(id=created.id), metadata=md
        )
        assert got.key == "region"
        listed = await stubs.fields.ListCustomFieldDefinitions(cf.ListCustomFieldDefinitionsRequest(), metadata=md)
        assert [d.key for d in listed.custom_field_definitions] == ["region"]
    updated = await stubs.fields.UpdateCustomFieldDefinition(
        cf.UpdateCustomFieldDefinitionRequest(
            custom_field_definition=renamed, update_mask=field_mask_pb2.FieldMask(paths=["label", "label_zh"])
        ),
        metadata=admin,
    )
    assert (updated.label, updated.label_zh, updated.version) == ("Sales region", "销售区域", 2)
    await stubs.fields.DeleteCustomFieldDefinition(cf.DeleteCustomFieldDefinitionRequest(id=created.id), metadata=admin)
    await fails(
        stubs.fields.GetCustomFieldDefinition(cf.GetCustomFieldDefinitionRequest(id=created.id), metadata=admin),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_definitions_are_validated(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-cf-defs")

    async def create(d: cf.CustomFieldDefinition, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> set[str]:
        request = cf.CreateCustomFieldDefinitionRequest(custom_field_definition=d)
        return set(await fails(stubs.fields.CreateCustomFieldDefinition(request, metadata=md), code))

    for bad_key in ("Segment", "1segment", "seg-ment", "", "s" * 41, "段"):
        assert await create(definition("contact", bad_key, "text")) == {"key"}, bad_key
    assert await create(definition("lead", "segment", "text")) == {"entity"}
    assert await create(definition("contact", "segment", "currency")) == {"type"}
    assert await create(definition("contact", "segment", "select")) == {"options"}
    assert await create(definition("contact", "segment", "number", "A")) == {"options"}
    assert await create(definition("contact", "segment", "select", "A", "A")) == {"options[1].key"}
    assert await create(definition("contact", "segment", "select", "A", "no spaces")) == {"options[1].key"}
    no_label = definition("contact", "segment", "text")
    no_label.label = " "
    assert await create(no_label) == {"label"}

    (made,) = await define(stubs, md, definition("contact", "segment", "select", "A", "B", "华东"))
    assert [(o.key, o.label) for o in made.options] == [("A", "A"), ("B", "B"), ("华东", "华东")]
    assert await create(definition("contact", "segment", "text"), grpc.StatusCode.ALREADY_EXISTS) == {"key"}
    (same_key_on_accounts,) = await define(stubs, md, definition("account", "segment", "number"))
    assert same_key_on_accounts.entity == "account"

    for path in ("key", "type", "entity"):
        changed = await fails(
            stubs.fields.UpdateCustomFieldDefinition(
                cf.UpdateCustomFieldDefinitionRequest(
                    custom_field_definition=cf.CustomFieldDefinition(id=made.id, key="other", type="text"),
                    update_mask=field_mask_pb2.FieldMask(paths=[path]),
                ),
                metadata=md,
            )
        )
        assert set(changed) == {"update_mask"}
    stale = cf.CustomFieldDefinition(id=made.id, label="X", version=7)
    await fails(
        stubs.fields.UpdateCustomFieldDefinition(
            cf.UpdateCustomFieldDefinitionRequest(
                custom_field_definition=stale, update_mask=field_mask_pb2.FieldMask(paths=["label"])
            ),
            metadata=md,
        ),
        grpc.StatusCode.ABORTED,
    )
    contacts_only = await stubs.fields.ListCustomFieldDefinitions(
        cf.ListCustomFieldDefinitionsRequest(entity="contact"), metadata=md
    )
    assert [(d.entity, d.key) for d in contacts_only.custom_field_definitions] == [("contact", "segment")]
    assert set(
        await fails(
            stubs.fields.ListCustomFieldDefinitions(cf.ListCustomFieldDefinitionsRequest(entity="x"), metadata=md)
        )
    ) == {"entity"}


# --- values -------------------------------------------------------------------------------------------


async def test_values_of_every_type_are_stored_and_indexed(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    tenant = "t-cf-values"
    md = token_issuer.metadata(tenant)
    await standard_fields(stubs, md)
    c = await stubs.customer.CreateContact(
        pb.CreateContactRequest(
            contact=contact(
                segment="A",
                score=42.5,
                renewal=" 2027-01-31 ",
                vip=True,
                channels=["email", "sms", "email"],
                note="  likes tea  ",
            )
        ),
        metadata=md,
    )
    expected = {
        "segment": "A",
        "score": 42.5,
        "renewal": "2027-01-31",
        "vip": True,
        "channels": ["email", "sms"],
        "note": "likes tea",
    }
    assert plain(c) == expected
    again = await stubs.customer.GetContact(pb.GetContactRequest(id=c.id), metadata=md)
    assert plain(again) == expected
    rows = await index_rows(stubs, tenant, c.id)
    from datetime import date

    assert rows == [
        ("channels", 0, "email", None, None, None),
        ("channels", 1, "sms", None, None, None),
        ("note", 0, "likes tea", None, None, None),
        ("renewal", 0, None, None, date(2027, 1, 31), None),
        ("score", 0, None, 42.5, None, None),
        ("segment", 0, "A", None, None, None),
        ("vip", 0, None, None, None, True),
    ]
    await stubs.customer.DeleteContact(pb.DeleteContactRequest(id=c.id), metadata=md)
    assert await index_rows(stubs, tenant, c.id) == []


async def test_every_type_is_validated_with_the_field_named(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-cf-invalid")
    await standard_fields(stubs, md)
    await define(stubs, md, definition("contact", "tier", "select", "gold", "silver", required=True))
    bad: list[tuple[str, Any]] = [
        ("segment", "Z"),  # not an option
        ("segment", 1),
        ("segment", ["A"]),
        ("score", "42"),
        ("score", True),
        ("renewal", "2027-02-30"),
        ("renewal", "2027/01/31"),
        ("renewal", "20270131"),
        ("renewal", 20270131),
        ("vip", "true"),
        ("vip", 1),
        ("channels", "email"),
        ("channels", ["email", "fax"]),
        ("channels", [1]),
        ("note", 5),
        ("note", "x" * 501),
        ("note", {"nested": "object"}),
        ("unknown_key", "x"),
    ]
    for key, value in bad:
        request = pb.CreateContactRequest(contact=contact(**{key: value, "tier": "gold"}))
        found = await fails(stubs.customer.CreateContact(request, metadata=md))
        assert set(found) == {f"custom_fields.{key}"}, (key, value, found)
    # required on create, reported together with the built-in fields' problems
    request = pb.CreateContactRequest(contact=contact(segment="Z"))
    request.contact.email = "not-an-email"
    found = await fails(stubs.customer.CreateContact(request, metadata=md))
    assert set(found) == {"email", "custom_fields.segment", "custom_fields.tier"}
    assert "required" in found["custom_fields.tier"]
    ok = await stubs.customer.CreateContact(pb.CreateContactRequest(contact=contact(tier="gold")), metadata=md)
    assert plain(ok) == {"tier": "gold"}


async def test_update_mask_replaces_the_map_or_one_key(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    tenant = "t-cf-mask"
    md = token_issuer.metadata(tenant)
    await standard_fields(stubs, md)
    await define(stubs, md, definition("contact", "tier", "select", "gold", "silver", required=True))
    c = await stubs.customer.CreateContact(
        pb.CreateContactRequest(contact=contact(segment="A", score=1, tier="gold", channels=["sms"])), metadata=md
    )

    async def update(paths: list[str], message: pb.Contact) -> pb.Contact:
        message.id = c.id
        return await stubs.customer.UpdateContact(
            pb.UpdateContactRequest(contact=message, update_mask=field_mask_pb2.FieldMask(paths=paths)), metadata=md
        )

    one = await update(["custom_fields.score"], contact(score=10, segment="B"))
    assert plain(one) == {"segment": "A", "score": 10, "tier": "gold", "channels": ["sms"]}
    assert one.version == 2
    two_keys = await update(
        ["custom_fields.segment", "custom_fields.vip", "first_name"], contact(segment="C", vip=False)
    )
    assert plain(two_keys) == {"segment": "C", "score": 10, "tier": "gold", "channels": ["sms"], "vip": False}
    removed = await update(["custom_fields.segment", "custom_fields.channels"], contact(segment=None))
    assert plain(removed) == {"score": 10, "tier": "gold", "vip": False}
    replaced = await update(["custom_fields"], contact(tier="silver", channels=["email", "phone"]))
    assert plain(replaced) == {"tier": "silver", "channels": ["email", "phone"]}
    assert replaced.version == 5
    rows = await index_rows(stubs, tenant, c.id)
    assert [(r[0], r[2]) for r in rows] == [("channels", "email"), ("channels", "phone"), ("tier", "silver")]
    unchanged = await update(["custom_fields.tier"], contact(tier="silver"))
    assert unchanged.version == 5

    async def refused(paths: list[str], message: pb.Contact) -> set[str]:
        message.id = c.id
        call = stubs.customer.UpdateContact(
            pb.UpdateContactRequest(contact=message, update_mask=field_mask_pb2.FieldMask(paths=paths)), metadata=md
        )
        return set(await fails(call))

    assert await refused(["custom_fields.tier"], contact()) == {"custom_fields.tier"}  # required: cannot remove
    assert await refused(["custom_fields"], contact(score=3)) == {"custom_fields.tier"}
    assert await refused(["custom_fields.score"], contact(score="high")) == {"custom_fields.score"}
    assert await refused(["custom_fields.nope"], contact(nope=1)) == {"custom_fields.nope"}
    assert await refused(["custom_fields", "custom_fields.score"], contact(score=1)) == {"update_mask"}
    assert await refused([], contact()) == {"update_mask"}
    final = await stubs.customer.GetContact(pb.GetContactRequest(id=c.id), metadata=md)
    assert plain(final) == {"tier": "silver", "channels": ["email", "phone"]} and final.version == 5


async def test_accounts_have_their_own_fields(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    md = token_issuer.metadata("t-cf-accounts")
    await define(
        stubs,
        md,
        definition("account", "segment", "number"),
        definition("contact", "segment", "select", "A"),
    )
    account = pb.Account(name="Acme")
    json_format.ParseDict({"custom_fields": {"segment": 3}}, account)
    created = await stubs.customer.CreateAccount(pb.CreateAccountRequest(account=account), metadata=md)
    assert plain(created) == {"segment": 3}
    wrong = pb.Account(name="Acme")
    json_format.ParseDict({"custom_fields": {"segment": "A"}}, wrong)
    assert set(await fails(stubs.customer.CreateAccount(pb.CreateAccountRequest(account=wrong), metadata=md))) == {
        "custom_fields.segment"
    }
    wrong.id = created.id
    update = pb.UpdateAccountRequest(
        account=wrong, update_mask=field_mask_pb2.FieldMask(paths=["custom_fields.segment"])
    )
    assert set(await fails(stubs.customer.UpdateAccount(update, metadata=md))) == {"custom_fields.segment"}
    right = pb.Account(id=created.id)
    json_format.ParseDict({"custom_fields": {"segment": 4.25}}, right)
    update = pb.UpdateAccountRequest(account=right, update_mask=field_mask_pb2.FieldMask(paths=["custom_fields"]))
    assert plain(await stubs.customer.UpdateAccount(update, metadata=md)) == {"segment": 4.25}


async def test_deleting_a_definition_removes_its_values(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    tenant = "t-cf-delete"
    md = token_issuer.metadata(tenant)
    segment, score = await define(
        stubs, md, definition("contact", "segment", "select", "A", "B"), definition("contact", "score", "number")
    )
    ids = []
    for i in range(3):
        c = await stubs.customer.CreateContact(
            pb.CreateContactRequest(contact=contact(f"D{i}", segment="A", score=i)), metadata=md
        )
        ids.append(c.id)
    plain_one = await stubs.customer.CreateContact(
        pb.CreateContactRequest(contact=contact("None", score=9)), metadata=md
    )
    # an option still in use cannot be removed; an unused one can
    keep_a_only = cf.CustomFieldDefinition(id=segment.id, options=[cf.CustomFieldOption(key="B")])
    found = await fails(
        stubs.fields.UpdateCustomFieldDefinition(
            cf.UpdateCustomFieldDefinitionRequest(
                custom_field_definition=keep_a_only, update_mask=field_mask_pb2.FieldMask(paths=["options"])
            ),
            metadata=md,
        )
    )
    assert set(found) == {"options"} and "A" in found["options"]
    await stubs.fields.DeleteCustomFieldDefinition(
        cf.DeleteCustomFieldDefinitionRequest(id=segment.id, version=segment.version), metadata=md
    )
    for record_id in ids:
        c = await stubs.customer.GetContact(pb.GetContactRequest(id=record_id), metadata=md)
        assert "segment" not in plain(c) and "score" in plain(c)
        assert c.version == 2
        assert [r[0] for r in await index_rows(stubs, tenant, record_id)] == ["score"]
    untouched = await stubs.customer.GetContact(pb.GetContactRequest(id=plain_one.id), metadata=md)
    assert untouched.version == 1
    # every record changed is announced and audited, in the same transaction
    with system_scope():
        async with stubs.runtime.db.transaction() as session:
            events = [
                json.loads(payload)
                for payload in await session.scalars(
                    select(OutboxMessage.payload).where(
                        OutboxMessage.tenant_id == tenant, OutboxMessage.type == "crm.customer.contact.updated"
                    )
                )
            ]
    assert sorted(e["subject"] for e in events) == sorted(ids)
    assert all(e["data"]["changed"] == ["custom_fields"] and e["data"]["contact"]["version"] == 2 for e in events)
    with tenant_scope(tenant):
        async with stubs.runtime.db.transaction() as session:
            entries = (
                await session.execute(
                    select(AuditEntry.entity_id, AuditEntry.before, AuditEntry.after).where(
                        AuditEntry.action == "update", AuditEntry.entity == "contact"
                    )
                )
            ).all()
    assert sorted(e.entity_id for e in entries) == sorted(ids)
    assert all(
        e.before["custom_fields"]["segment"] == "A" and "segment" not in e.after["custom_fields"] for e in entries
    )
    # the key is free again, even with another type, and old values do not come back
    await define(stubs, md, definition("contact", "segment", "number"))
    c = await stubs.customer.GetContact(pb.GetContactRequest(id=ids[0]), metadata=md)
    assert "segment" not in plain(c)
    assert score.key == "score"


async def test_tenants_never_see_or_use_each_others_fields(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    a, b = token_issuer.metadata("t-cf-iso-a"), token_issuer.metadata("t-cf-iso-b")
    (a_segment,) = await define(stubs, a, definition("contact", "segment", "select", "A", "B"))
    (b_segment,) = await define(stubs, b, definition("contact", "segment", "number"))
    await define(stubs, a, definition("contact", "only_a", "text"))
    # each tenant lists and reads only its own definitions
    for md, mine, other in ((a, a_segment, b_segment), (b, b_segment, a_segment)):
        listed = await stubs.fields.ListCustomFieldDefinitions(cf.ListCustomFieldDefinitionsRequest(), metadata=md)
        assert mine.id in {d.id for d in listed.custom_field_definitions}
        assert other.id not in {d.id for d in listed.custom_field_definitions}
        for call in (
            stubs.fields.GetCustomFieldDefinition(cf.GetCustomFieldDefinitionRequest(id=other.id), metadata=md),
            stubs.fields.DeleteCustomFieldDefinition(cf.DeleteCustomFieldDefinitionRequest(id=other.id), metadata=md),
            stubs.fields.UpdateCustomFieldDefinition(
                cf.UpdateCustomFieldDefinitionRequest(
                    custom_field_definition=cf.CustomFieldDefinition(id=other.id, label="stolen"),
                    update_mask=field_mask_pb2.FieldMask(paths=["label"]),
                ),
                metadata=md,
            ),
        ):
            await fails(call, grpc.StatusCode.NOT_FOUND)
    # values are validated against the caller's own definitions
    in_a = await stubs.customer.CreateContact(pb.CreateContactRequest(contact=contact(segment="A")), metadata=a)
    in_b = await stubs.customer.CreateContact(pb.CreateContactRequest(contact=contact(segment=7)), metadata=b)
    assert set(
        await fails(stubs.customer.CreateContact(pb.CreateContactRequest(contact=contact(segment=7)), metadata=a))
    )
    assert set(
        await fails(stubs.customer.CreateContact(pb.CreateContactRequest(contact=contact(only_a="x")), metadata=b))
    ) == {"custom_fields.only_a"}
    # filters and keys of the other tenant are neither usable nor matching
    a_list = await stubs.customer.ListContacts(pb.ListContactsRequest(custom_filter=["segment=A"]), metadata=a)
    assert [c.id for c in a_list.contacts] == [in_a.id]
    b_list = await stubs.customer.ListContacts(pb.ListContactsRequest(custom_filter=["segment>=1"]), metadata=b)
    assert [c.id for c in b_list.contacts] == [in_b.id]
    assert set(
        await fails(stubs.customer.ListContacts(pb.ListContactsRequest(custom_filter=["segment=A"]), metadata=b))
    ) == {"custom_filter[0]"}
    assert set(
        await fails(stubs.customer.ListContacts(pb.ListContactsRequest(custom_filter=["only_a~x"]), metadata=b))
    ) == {"custom_filter[0]"}
    # deleting a tenant's definition leaves the other tenant's values alone
    await stubs.fields.DeleteCustomFieldDefinition(cf.DeleteCustomFieldDefinitionRequest(id=a_segment.id), metadata=a)
    still = await stubs.customer.GetContact(pb.GetContactRequest(id=in_b.id), metadata=b)
    assert plain(still) == {"segment": 7}


async def test_bulk_writers_rebuild_the_index_with_reindex(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    tenant = "t-cf-bulk"
    md = token_issuer.metadata(tenant)
    await standard_fields(stubs, md)
    record_id = uuid7()
    with tenant_scope(tenant):
        async with stubs.runtime.db.transaction() as session:  # a bulk INSERT: no mapper events run
            await session.execute(
                insert(Contact),
                [
                    {
                        "id": record_id,
                        "tenant_id": tenant,
                        "last_name": "Bulk",
                        "custom_fields": {"segment": "B", "score": 5},
                    }
                ],
            )
    found = await stubs.customer.ListContacts(pb.ListContactsRequest(custom_filter=["segment=B"]), metadata=md)
    assert [c.id for c in found.contacts] == []
    with tenant_scope(tenant):
        async with stubs.runtime.db.transaction() as session:
            await reindex(session, "contact", [(record_id, {"segment": "B", "score": 5})])
    found = await stubs.customer.ListContacts(pb.ListContactsRequest(custom_filter=["segment=B"]), metadata=md)
    assert [c.id for c in found.contacts] == [record_id]
    with tenant_scope(tenant):
        async with stubs.runtime.db.transaction() as session:
            await reindex(session, "contact", [(record_id, {"score": 6})])
    assert [(r[0], r[3]) for r in await index_rows(stubs, tenant, record_id)] == [("score", 6.0)]
