"""crm.customer.v1.CustomFieldService: the tenant's custom field definitions. Everyone in the tenant may
read them; only admins may create, change or delete them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import empty_pb2
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm.customer.v1 import custom_fields_pb2 as pb
from crm.customer.v1 import custom_fields_pb2_grpc
from crm_customer.custom_fields import (
    ACCOUNT,
    CONTACT,
    ENTITIES,
    FIELD,
    KEY,
    TYPES,
    WITH_OPTIONS,
    CustomFieldDefinition,
    CustomFieldValue,
    require_admin,
)
from crm_customer.models import Account, Contact
from crm_customer.servicer import account_message, contact_message
from crm_kit import audit, validation
from crm_kit.crud import ResourceStore
from crm_kit.db import Database, utcnow
from crm_kit.errors import AlreadyExists, FieldViolation, InvalidArgument, Violations
from crm_kit.protos import mask_paths, to_message

MUTABLE = ("label", "label_zh", "options", "required")
OPTION_KEY = re.compile(r"^[\w-]{1,64}$")
MAX_OPTIONS = 200
MAX_DEFINITIONS = 200  # per tenant and entity


def definition_message(row: CustomFieldDefinition) -> pb.CustomFieldDefinition:
    message = to_message(row, pb.CustomFieldDefinition, options=None)
    message.options.extend(pb.CustomFieldOption(**option) for option in row.options or ())
    return message


def _options(v: Violations, kind: str, options: Sequence[pb.CustomFieldOption]) -> list[dict[str, str]]:
    if kind not in TYPES:
        return []  # the type is reported; its options cannot be judged
    if kind not in WITH_OPTIONS:
        if options:
            v.add("options", f"only select and multi_select fields have options, not {kind} fields")
        return []
    if not options:
        v.add("options", f"a {kind} field needs at least one option")
    elif len(options) > MAX_OPTIONS:
        v.add("options", f"at most {MAX_OPTIONS} options")
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, option in enumerate(options):
        key = option.key.strip()
        if not OPTION_KEY.match(key):
            v.add(f"options[{i}].key", "must be 1 to 64 letters, digits, '_' or '-'")
        elif key in seen:
            v.add(f"options[{i}].key", f"{key!r} appears twice")
        seen.add(key)
        label = validation.text(v, f"options[{i}].label", option.label, max_length=100) or key
        label_zh = validation.text(v, f"options[{i}].label_zh", option.label_zh, max_length=100)
        out.append({"key": key, "label": label, "label_zh": label_zh})
    return out


def definition_values(message: pb.CustomFieldDefinition, fields: Sequence[str], kind: str) -> dict[str, Any]:
    """Validated column values for the named fields; `kind` is the field's type (for its options)."""
    v = Violations()
    out: dict[str, Any] = {}
    for name in fields:
        if name == "entity":
            out[name] = validation.one_of(v, name, message.entity, tuple(ENTITIES))
        elif name == "key":
            key = message.key.strip()
            if not KEY.match(key):
                v.add(name, "must be snake_case: a lower-case letter, then up to 39 lower-case letters, digits or _")
            out[name] = key
        elif name == "type":
            out[name] = validation.one_of(v, name, message.type, TYPES)
        elif name == "label":
            out[name] = validation.text(v, name, message.label, required=True, max_length=100)
        elif name == "label_zh":
            out[name] = validation.text(v, name, message.label_zh, max_length=100)
        elif name == "options":
            out[name] = _options(v, kind, message.options)
        elif name == "required":
            out[name] = message.required
    v.raise_if_any()
    return out


class CustomFieldServicer(custom_fields_pb2_grpc.CustomFieldServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db
        self.definitions = ResourceStore(
            CustomFieldDefinition, context="customer", entity="custom_field", to_message=definition_message
        )
        # Only to emit the `updated` events of records whose values a deleted definition takes away.
        self.records: dict[str, ResourceStore[Any]] = {
            CONTACT: ResourceStore(Contact, context="customer", entity=CONTACT, to_message=contact_message),
            ACCOUNT: ResourceStore(Account, context="customer", entity=ACCOUNT, to_message=account_message),
        }

    async def CreateCustomFieldDefinition(
        self, request: pb.CreateCustomFieldDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CustomFieldDefinition:
        require_admin()
        given = request.custom_field_definition
        kind = given.type.strip().lower()
        values = definition_values(given, ("entity", "key", "type", "label", "label_zh", "options", "required"), kind)
        try:
            async with self.db.transaction() as session:
                await self._check_new(session, values["entity"], values["key"])
                row = await self.definitions.create(session, values)
        except IntegrityError:  # created concurrently by another admin: the unique key caught it
            raise _taken(values["entity"], values["key"]) from None
        return definition_message(row)

    async def _check_new(self, session: AsyncSession, entity: str, key: str) -> None:
        found = await session.execute(
            select(CustomFieldDefinition.id).where(
                CustomFieldDefinition.entity == entity, CustomFieldDefinition.key == key
            )
        )
        if found.first() is not None:
            raise _taken(entity, key)
        count = await session.scalar(
            select(func.count()).select_from(CustomFieldDefinition).where(CustomFieldDefinition.entity == entity)
        )
        if (count or 0) >= MAX_DEFINITIONS:
            raise InvalidArgument.field("entity", f"at most {MAX_DEFINITIONS} custom fields per entity")

    async def GetCustomFieldDefinition(
        self, request: pb.GetCustomFieldDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CustomFieldDefinition:
        async with self.db.transaction() as session:
            return definition_message(await self.definitions.get(session, request.id))

    async def UpdateCustomFieldDefinition(
        self, request: pb.UpdateCustomFieldDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CustomFieldDefinition:
        require_admin()
        given = request.custom_field_definition
        paths = mask_paths(request.update_mask, MUTABLE)
        async with self.db.transaction() as session:
            current = await self.definitions.get(session, given.id, for_update=True)
            values = definition_values(given, paths, current.type)
            if "options" in values:
                await self._check_removed_options(session, current, values["options"])
            row, _ = await self.definitions.update(session, given.id, values, given.version)
        return definition_message(row)

    async def _check_removed_options(
        self, session: AsyncSession, row: CustomFieldDefinition, options: list[dict[str, str]]
    ) -> None:
        kept = {o["key"] for o in options}
        removed = [o["key"] for o in row.options or () if o["key"] not in kept]
        if not removed:
            return
        v = CustomFieldValue
        used = await session.execute(
            select(v.text_value)
            .where(v.entity == row.entity, v.key == row.key, v.text_value.in_(removed))
            .distinct()
            .limit(10)
        )
        in_use = sorted(str(value) for (value,) in used)
        if in_use:
            raise InvalidArgument.field(
                "options", f"options still used by records cannot be removed: {', '.join(in_use)}"
            )

    async def DeleteCustomFieldDefinition(
        self, request: pb.DeleteCustomFieldDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        require_admin()
        async with self.db.transaction() as session:
            row = await self.definitions.delete(session, request.id, request.version)
            await remove_values(session, self.records[row.entity], row.key)
        return empty_pb2.Empty()

    async def ListCustomFieldDefinitions(
        self, request: pb.ListCustomFieldDefinitionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCustomFieldDefinitionsResponse:
        filters = {"entity": request.entity.strip().lower()}
        where: list[ColumnElement[bool]] = []
        if filters["entity"]:
            v = Violations()
            validation.one_of(v, "entity", filters["entity"], tuple(ENTITIES))
            v.raise_if_any()
            where.append(CustomFieldDefinition.entity == filters["entity"])
        async with self.db.transaction() as session:
            rows, token = await self.definitions.list(
                session, where=where, filters=filters, page_size=request.page_size, page_token=request.page_token
            )
        return pb.ListCustomFieldDefinitionsResponse(
            custom_field_definitions=[definition_message(r) for r in rows], next_page_token=token
        )


def _taken(entity: str, key: str) -> AlreadyExists:
    return AlreadyExists(
        f"the {entity} custom field {key!r} already exists",
        [FieldViolation("key", f"{key!r} is already a custom field of {entity}s in this tenant")],
    )


async def remove_values(session: AsyncSession, store: ResourceStore[Any], key: str, batch: int = 500) -> int:
    """Remove a deleted field's values from every record of `store`'s entity in this transaction (the JSON,
    and the index through the mapper events). Each record changed gets a new version, an `updated` event
    naming custom_fields, and an audit entry with the values before and after. Returns the records changed."""
    model = store.model
    v = CustomFieldValue
    ids = list(
        (await session.execute(select(v.record_id).where(v.entity == store.entity, v.key == key).distinct())).scalars()
    )
    now = utcnow()
    changed = 0
    for start in range(0, len(ids), batch):
        rows = list((await session.execute(select(model).where(model.id.in_(ids[start : start + batch])))).scalars())
        touched: list[tuple[Any, dict[str, Any]]] = []
        for row in rows:
            before = dict(row.custom_fields or {})
            if key in before:
                row.custom_fields = {k: val for k, val in before.items() if k != key}
                row.version += 1
                row.update_time = now
                touched.append((row, before))
        await session.flush()
        for row, before in touched:
            await store.emit(session, row, "updated", changed=[FIELD])
            await audit.record_audit(
                session,
                action=audit.UPDATE,
                entity=store.entity,
                entity_id=row.id,
                before={FIELD: before},
                after={FIELD: row.custom_fields},
            )
        changed += len(touched)
    return changed
