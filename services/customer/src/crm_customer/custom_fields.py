"""Custom fields per tenant: the definitions, validation of the values a contact or account carries, and the
typed index table that filters and sorting run on.

A record keeps its values as JSON (`custom_fields`, what reads return). Every value is also written to
`custom_field_values`, one row per (record, key) and one per option of a multi_select, in a column of its
type, so that filters and sorting are SQL over indexes (see custom_field_search.py). The index is
maintained by mapper events on Contact and Account, inside the flush that changes the record, so every
code path that changes `custom_fields` through the ORM (the servicer, merge, erase, import) keeps it true.
Bulk statements that bypass the ORM must call `reindex` themselves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Float,
    Index,
    SmallInteger,
    String,
    UniqueConstraint,
    bindparam,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Mapper, attributes, mapped_column, object_session

from crm_customer.models import Account, Base, Contact
from crm_kit.context import ADMIN, current_principal, require_tenant
from crm_kit.db import Resource, TenantScoped
from crm_kit.errors import InvalidArgument, PermissionDenied, Violations
from crm_kit.protos import mask_paths

CONTACT = "contact"
ACCOUNT = "account"
ENTITIES: dict[str, type[Any]] = {CONTACT: Contact, ACCOUNT: Account}

TEXT = "text"
NUMBER = "number"
DATE = "date"
SELECT = "select"
MULTI_SELECT = "multi_select"
BOOLEAN = "boolean"
TYPES = (TEXT, NUMBER, DATE, SELECT, MULTI_SELECT, BOOLEAN)
WITH_OPTIONS = (SELECT, MULTI_SELECT)

KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_TEXT = 500  # keeps a text value inside a PostgreSQL btree entry even in 4-byte UTF-8
MAX_KEYS_IN_INPUT = 200
FIELD = "custom_fields"


def field_name(key: str) -> str:
    """The name a violation about one custom field carries: custom_fields.<key>."""
    return f"{FIELD}.{key}"


# --- tables -------------------------------------------------------------------------------------------


class CustomFieldDefinition(Base, Resource):
    __tablename__ = "custom_field_definitions"
    __table_args__ = (UniqueConstraint("tenant_id", "entity", "key"),)

    entity: Mapped[str] = mapped_column(String(16), nullable=False)
    key: Mapped[str] = mapped_column(String(40), nullable=False)
    label: Mapped[str] = mapped_column(String(100), nullable=False)
    label_zh: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    # [{"key": ..., "label": ..., "label_zh": ...}] for select and multi_select
    options: Mapped[list[dict[str, str]]] = mapped_column(JSON, nullable=False, default=list)
    required: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class CustomFieldValue(Base, TenantScoped):
    """The typed index of custom field values: one row per (record, key, ordinal); ordinal > 0 only for the
    further options of a multi_select. Exactly one of the *_value columns is set, by the field's type
    (select and multi_select options are text)."""

    __tablename__ = "custom_field_values"
    __table_args__ = (
        Index("ix_custom_field_values_text", "tenant_id", "entity", "key", "text_value", "record_id"),
        Index("ix_custom_field_values_number", "tenant_id", "entity", "key", "number_value", "record_id"),
        Index("ix_custom_field_values_date", "tenant_id", "entity", "key", "date_value", "record_id"),
        Index("ix_custom_field_values_bool", "tenant_id", "entity", "key", "bool_value", "record_id"),
        {"sqlite_with_rowid": False},
    )

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    entity: Mapped[str] = mapped_column(String(16), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    ordinal: Mapped[int] = mapped_column(SmallInteger, primary_key=True, default=0)
    text_value: Mapped[str | None] = mapped_column(String(MAX_TEXT), nullable=True)
    number_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    date_value: Mapped[date | None] = mapped_column(Date, nullable=True)
    bool_value: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


VALUE_COLUMNS = {
    TEXT: CustomFieldValue.text_value,
    SELECT: CustomFieldValue.text_value,
    MULTI_SELECT: CustomFieldValue.text_value,
    NUMBER: CustomFieldValue.number_value,
    DATE: CustomFieldValue.date_value,
    BOOLEAN: CustomFieldValue.bool_value,
}


# --- the tenant's definitions -------------------------------------------------------------------------


def require_admin() -> None:
    principal = current_principal()
    if principal is None or not principal.has_role(ADMIN):
        raise PermissionDenied("only an admin may change custom field definitions")


@dataclass(frozen=True)
class Definition:
    key: str
    type: str
    required: bool
    options: tuple[str, ...]


class Catalog:
    """One entity's custom field definitions in the current tenant, loaded once per request."""

    def __init__(self, entity: str, definitions: Iterable[Definition]) -> None:
        self.entity = entity
        self.by_key = {d.key: d for d in definitions}

    @classmethod
    async def load(cls, session: AsyncSession, entity: str) -> Catalog:
        rows = (
            await session.execute(select(CustomFieldDefinition).where(CustomFieldDefinition.entity == entity))
        ).scalars()
        return cls(entity, (definition_of(r) for r in rows))

    @classmethod
    async def for_reading(cls, session: AsyncSession, entity: str) -> Catalog:
        """`load`, once per session: a list request consults the catalog for its sort, its filters and its
        pager. Only for sessions that do not change definitions."""
        cached: dict[str, Catalog] = session.info.setdefault("custom_field_catalogs", {})
        if entity not in cached:
            cached[entity] = await cls.load(session, entity)
        return cached[entity]

    def get(self, key: str) -> Definition | None:
        return self.by_key.get(key)

    @property
    def required(self) -> list[str]:
        return sorted(k for k, d in self.by_key.items() if d.required)


def definition_of(row: CustomFieldDefinition) -> Definition:
    return Definition(row.key, row.type, row.required, tuple(o["key"] for o in row.options or ()))


# --- values: proto <-> python, validation -------------------------------------------------------------


def from_proto(value: struct_pb2.Value) -> Any:
    """A google.protobuf.Value as plain Python (None, float, str, bool, list, dict)."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "list_value":
        return [from_proto(v) for v in value.list_value.values]
    if kind == "struct_value":
        return {k: from_proto(v) for k, v in value.struct_value.fields.items()}
    return getattr(value, kind)


def fill(target: Any, values: Mapping[str, Any] | None) -> None:
    """Copy stored values into a message's map<string, google.protobuf.Value>."""
    for key, value in sorted((values or {}).items()):
        slot: struct_pb2.Value = target[key]
        if isinstance(value, bool):
            slot.bool_value = value
        elif isinstance(value, int | float):
            slot.number_value = float(value)
        elif isinstance(value, str):
            slot.string_value = value
        elif isinstance(value, list):
            slot.list_value.extend(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def clean(v: Violations, definition: Definition, value: Any) -> Any:
    """The stored form of one value (None = no value), or a violation naming custom_fields.<key>."""
    name = field_name(definition.key)
    if value is None:
        return None
    kind = definition.type
    if kind == TEXT:
        if not isinstance(value, str):
            v.add(name, f"must be text, not {_kind(value)}")
            return None
        value = value.strip()
        if len(value) > MAX_TEXT:
            v.add(name, f"must be at most {MAX_TEXT} characters")
        return value or None
    if kind == NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            v.add(name, f"must be a number, not {_kind(value)}")
            return None
        if not math.isfinite(value):
            v.add(name, "must be a finite number")
            return None
        return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)
    if kind == DATE:
        if not isinstance(value, str):
            v.add(name, f"must be a date string YYYY-MM-DD, not {_kind(value)}")
            return None
        parsed = parse_date(value)
        if parsed is None:
            v.add(name, f"must be a date in the form YYYY-MM-DD, not {value.strip()[:40]!r}")
            return None
        return parsed.isoformat()
    if kind == BOOLEAN:
        if not isinstance(value, bool):
            v.add(name, f"must be true or false, not {_kind(value)}")
            return None
        return value
    if kind == SELECT:
        if not isinstance(value, str):
            v.add(name, f"must be one option key (a string), not {_kind(value)}")
            return None
        if value not in definition.options:
            v.add(name, f"{value[:64]!r} is not an option; choose one of: {', '.join(definition.options)}")
            return None
        return value
    # multi_select
    if not isinstance(value, list):
        v.add(name, f"must be an array of option keys, not {_kind(value)}")
        return None
    chosen: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or item not in definition.options:
            shown = repr(item[:64]) if isinstance(item, str) else _kind(item)
            v.add(name, f"item {i}: {shown} is not an option; choose from: {', '.join(definition.options)}")
        elif item not in chosen:
            chosen.append(item)
    return chosen or None


def parse_date(text: str) -> date | None:
    text = text.strip()
    if not DAY.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _input(values: Mapping[str, struct_pb2.Value], v: Violations) -> dict[str, Any] | None:
    if len(values) > MAX_KEYS_IN_INPUT:
        v.add(FIELD, f"at most {MAX_KEYS_IN_INPUT} keys")
        return None
    return {k: from_proto(val) for k, val in values.items()}


def _check_map(v: Violations, catalog: Catalog, given: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(given):
        definition = catalog.get(key)
        if definition is None:
            v.add(field_name(key), f"is not a custom field of {catalog.entity}s in this tenant")
            continue
        cleaned = clean(v, definition, given[key])
        if cleaned is not None:
            out[key] = cleaned
    return out


def values_for_create(v: Violations, catalog: Catalog, values: Mapping[str, struct_pb2.Value]) -> dict[str, Any]:
    """Validate a new record's custom_fields: every key defined, every value of its type, required present.
    Problems are added to `v`, so they are reported together with the built-in fields'."""
    given = _input(values, v)
    if given is None:
        return {}
    out = _check_map(v, catalog, given)
    for key in catalog.required:
        if key not in out and catalog.get(key) is not None and not _reported(v, key):
            v.add(field_name(key), "is required")
    return out


def _reported(v: Violations, key: str) -> bool:
    return any(item.field == field_name(key) for item in v.items)


@dataclass(frozen=True)
class MaskSplit:
    builtin: list[str]  # the other paths, for the built-in fields
    replace: bool  # "custom_fields": the whole map
    keys: list[str]  # "custom_fields.<key>": those keys only

    @property
    def touches_custom(self) -> bool:
        return self.replace or bool(self.keys)


def split_mask(paths: Sequence[str]) -> MaskSplit:
    """Separate the custom-field paths of an update mask from the built-in ones."""
    builtin: list[str] = []
    keys: list[str] = []
    replace = False
    for path in paths:
        if path == FIELD:
            replace = True
        elif path.startswith(FIELD + "."):
            key = path[len(FIELD) + 1 :]
            if key not in keys:
                keys.append(key)
        else:
            builtin.append(path)
    if replace and keys:
        raise InvalidArgument.field(
            "update_mask", f"name either {FIELD} (replace all) or {FIELD}.<key> (one key), not both"
        )
    return MaskSplit(builtin, replace, keys)


def values_for_update(
    v: Violations,
    catalog: Catalog,
    current: Mapping[str, Any] | None,
    values: Mapping[str, struct_pb2.Value],
    mask: MaskSplit,
) -> dict[str, Any]:
    """The record's custom_fields after an update with `mask`; problems are added to `v`."""
    current = dict(current or {})
    if mask.replace:
        given = _input(values, v)
        if given is None:
            return current
        out = _check_map(v, catalog, given)
        dropped = [k for k in catalog.required if k not in out and not _reported(v, k)]
    else:
        out = current
        dropped = []
        for key in mask.keys:
            definition = catalog.get(key)
            if definition is None:
                v.add(field_name(key), f"is not a custom field of {catalog.entity}s in this tenant")
                continue
            cleaned = clean(v, definition, from_proto(values[key]) if key in values else None)
            if cleaned is None:
                out.pop(key, None)
                if definition.required and not _reported(v, key):
                    dropped.append(key)
            else:
                out[key] = cleaned
    for key in dropped:
        v.add(field_name(key), "is required and cannot be removed")
    return out


def update_paths(update_mask: FieldMask, mutable: Iterable[str]) -> tuple[list[str], MaskSplit]:
    """An update mask's built-in paths (checked like `crm_kit.protos.mask_paths`) and its custom-field part."""
    split = split_mask(list(update_mask.paths))
    if split.builtin or not split.touches_custom:
        return mask_paths(FieldMask(paths=split.builtin), mutable), split
    return [], split


async def validated(
    session: AsyncSession,
    entity: str,
    builtin: Callable[[], dict[str, Any]],
    given: Mapping[str, struct_pb2.Value],
    *,
    mask: MaskSplit | None = None,
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The built-in values (`builtin()`, which raises InvalidArgument) plus `custom_fields`, with every
    violation of both reported together. Without `mask` this is a create (required fields enforced); with
    one, `current` is the record's custom_fields and only what the mask names changes."""
    v = Violations()
    try:
        values = builtin()
    except InvalidArgument as exc:
        v.items.extend(exc.violations)
        values = {}
    if mask is None or mask.touches_custom:
        catalog = await Catalog.load(session, entity)
        if mask is None:
            values[FIELD] = values_for_create(v, catalog, given)
        else:
            values[FIELD] = values_for_update(v, catalog, current, given, mask)
    v.raise_if_any()
    return values


# --- the typed index ----------------------------------------------------------------------------------


def index_rows(
    tenant_id: str, entity: str, record_id: str, values: Mapping[str, Any], types: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The custom_field_values rows for one record's values (`types`: key -> field type)."""
    rows: list[dict[str, Any]] = []
    for key, value in values.items():
        kind = types.get(key)
        if kind is None or value is None:
            continue
        items = value if kind == MULTI_SELECT else [value]
        for ordinal, item in enumerate(items):
            row = {
                "tenant_id": tenant_id,
                "entity": entity,
                "record_id": record_id,
                "key": key,
                "ordinal": ordinal,
                "text_value": None,
                "number_value": None,
                "date_value": None,
                "bool_value": None,
            }
            if kind == NUMBER:
                row["number_value"] = float(item)
            elif kind == DATE:
                row["date_value"] = date.fromisoformat(item)
            elif kind == BOOLEAN:
                row["bool_value"] = bool(item)
            else:
                row["text_value"] = str(item)
            rows.append(row)
    return rows


_TABLE = CustomFieldValue.__table__
_DEFINITIONS = CustomFieldDefinition.__table__


def _types(connection: Connection, session: Any, tenant_id: str, entity: str, keys: Iterable[str]) -> dict[str, str]:
    """key -> field type for the index, cached in the session (types are immutable; a miss reloads)."""
    cache: dict[tuple[str, str], dict[str, str]] = (
        session.info.setdefault("crm_custom_field_types", {}) if session is not None else {}
    )
    known = cache.get((tenant_id, entity), {})
    if any(k not in known for k in keys):
        rows = connection.execute(
            select(_DEFINITIONS.c.key, _DEFINITIONS.c.type).where(
                _DEFINITIONS.c.tenant_id == tenant_id, _DEFINITIONS.c.entity == entity
            )
        )
        known = {k: t for k, t in rows}
        cache[(tenant_id, entity)] = known
    return known


def _write_index(
    connection: Connection, target: Any, before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> None:
    """Rewrite the index rows of the keys whose value changed (`before` None: unknown, rewrite all)."""
    tenant_id, entity, record_id = target.tenant_id, _entity_of(target), target.id
    if before is None:
        changed = sorted(after)
        connection.execute(
            delete(_TABLE).where(
                _TABLE.c.tenant_id == tenant_id, _TABLE.c.entity == entity, _TABLE.c.record_id == record_id
            )
        )
    else:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if before and changed:
            connection.execute(
                delete(_TABLE).where(
                    _TABLE.c.tenant_id == tenant_id,
                    _TABLE.c.entity == entity,
                    _TABLE.c.record_id == record_id,
                    _TABLE.c.key.in_(changed),
                )
            )
    fresh = {k: after[k] for k in changed if k in after}
    if not fresh:
        return
    types = _types(connection, object_session(target), tenant_id, entity, fresh)
    rows = index_rows(tenant_id, entity, record_id, fresh, types)
    if rows:
        connection.execute(insert(_TABLE), rows)


def _entity_of(target: Any) -> str:
    return CONTACT if isinstance(target, Contact) else ACCOUNT


def _after_insert(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    if target.custom_fields:
        _write_index(connection, target, {}, target.custom_fields)


def _after_update(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    history = attributes.get_history(target, "custom_fields")
    if not history.has_changes():
        return
    before = (history.deleted[0] or {}) if history.deleted else None
    _write_index(connection, target, before, target.custom_fields or {})


def _after_delete(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    connection.execute(
        delete(_TABLE).where(
            _TABLE.c.tenant_id == target.tenant_id,
            _TABLE.c.entity == _entity_of(target),
            _TABLE.c.record_id == target.id,
        )
    )


for _model in (Contact, Account):
    event.listen(_model, "after_insert", _after_insert)
    event.listen(_model, "after_update", _after_update)
    event.listen(_model, "after_delete", _after_delete)


async def reindex(session: AsyncSession, entity: str, records: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
    """Rewrite the index of records changed without the ORM (bulk statements): (record id, custom_fields)."""
    tenant = require_tenant()
    batch = list(records)
    if not batch:
        return
    # One primary-key delete per record (an executemany), which every planner runs as an index lookup.
    await session.execute(
        delete(_TABLE).where(
            _TABLE.c.tenant_id == tenant, _TABLE.c.entity == entity, _TABLE.c.record_id == bindparam("rid")
        ),
        [{"rid": rid} for rid, _ in batch],
    )
    definitions = await session.execute(
        select(CustomFieldDefinition.key, CustomFieldDefinition.type).where(CustomFieldDefinition.entity == entity)
    )
    types: dict[str, str] = {key: kind for key, kind in definitions}
    rows = [r for rid, values in batch for r in index_rows(tenant, entity, rid, values, types)]
    if rows:
        await session.execute(insert(_TABLE), rows)
