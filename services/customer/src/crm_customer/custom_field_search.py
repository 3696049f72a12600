"""Filtering and sorting contacts and accounts by custom fields, in SQL over the typed index table.

A filter is `<key><op><value>`: op one of = != < <= > >= and ~ (text contains); `!=` is the negation of `=`
(records without a value match it); an empty value tests presence (`key=` has no value, `key!=` has one).
Each condition is planned by how many records it matches, read once from the (tenant_id, entity, key,
<typed value>) index with a bound (SMALL_SET): a few matching records are selected by id; many are tested
per record with an EXISTS probe on the primary key as the list scans its own order, so a page fills early
(under a custom sort, which must see every match anyway, they come from the value index as one IN list).
On PostgreSQL, many matches of a positive condition on a single-valued field are an inner join with the
record's own index row instead (`joined`): its planner walks or hashes as the counts say, where it
misjudged the semi-join.

Sorting by `custom.<key>` orders on the record's value read from the index by primary key; records without
a value come last ascending (first descending); the expression is never NULL, which keyset pagination needs.

Contacts get both through crm_customer.search's providers (registered below); accounts call
`filter_clauses` from the servicer.
"""

from __future__ import annotations

import operator
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from crm_customer import search
from crm_customer.custom_fields import (
    BOOLEAN,
    CONTACT,
    DATE,
    ENTITIES,
    MULTI_SELECT,
    NUMBER,
    SELECT,
    TEXT,
    VALUE_COLUMNS,
    Catalog,
    CustomFieldValue,
    Definition,
    parse_date,
)
from crm_kit import ordering, pagination
from crm_kit.context import require_tenant
from crm_kit.errors import InvalidArgument, Violations
from crm_kit.ordering import SortField, SortKey

FILTER_FIELD = "custom_filter"
SORT_PREFIX = "custom."
MAX_FILTERS = 20
MAX_EXPRESSION = 600
SMALL_SET = 1000  # matching records up to which a condition selects them by id
EXPRESSION = re.compile(r"^\s*([a-z][a-z0-9_]{0,39})\s*(<=|>=|!=|=|<|>|~)(.*)$", re.DOTALL)
NUMBER_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")
OPERATORS: dict[str, tuple[str, ...]] = {
    TEXT: ("=", "!=", "<", "<=", ">", ">=", "~"),
    NUMBER: ("=", "!=", "<", "<=", ">", ">="),
    DATE: ("=", "!=", "<", "<=", ">", ">="),
    BOOLEAN: ("=", "!="),
    SELECT: ("=", "!="),
    MULTI_SELECT: ("=", "!="),
}
_COMPARE: dict[str, Any] = {
    "=": operator.eq,
    "!=": operator.eq,  # the negation is applied to the set of matching records
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_NAMES = {"=": "equals", "!=": "differs from", "~": "contains", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _operand(definition: Definition, op: str, raw: str) -> Any:
    """The typed operand, or ValueError with the reason."""
    kind = definition.type
    if kind == NUMBER:
        if not NUMBER_TEXT.match(raw):
            raise ValueError(f"{definition.key} is a number; {raw[:40]!r} is not a number")
        return float(raw)
    if kind == DATE:
        day = parse_date(raw)
        if day is None:
            raise ValueError(f"{definition.key} is a date; write the value as YYYY-MM-DD, not {raw[:40]!r}")
        return day
    if kind == BOOLEAN:
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"{definition.key} is a boolean; the value must be true or false")
        return raw.lower() == "true"
    if kind in (SELECT, MULTI_SELECT):
        if raw not in definition.options:
            raise ValueError(f"{raw[:64]!r} is not an option of {definition.key} ({', '.join(definition.options)})")
        return raw
    if len(raw) > 500:
        raise ValueError("the value must be at most 500 characters")
    return raw


@dataclass(frozen=True)
class Condition:
    """One parsed `custom_filter` entry: records whose `key` value satisfies `test` (any value when None),
    or, when `negate`, every other record."""

    entity: str
    key: str
    test: Callable[[ColumnElement[Any]], ColumnElement[bool]] | None
    column: ColumnElement[Any]
    negate: bool
    seeks: bool  # `test` is an equality the typed index can seek on (else a range or a substring)
    single: bool = True  # at most one value per record (every type but multi_select), at ordinal 0


def parse_condition(entity: str, expr: str, index: int, catalog: Catalog) -> Condition:
    """`custom_filter[index]` parsed against the tenant's definitions; InvalidArgument naming it if invalid."""
    name = f"{FILTER_FIELD}[{index}]"
    if len(expr) > MAX_EXPRESSION:
        raise InvalidArgument.field(name, f"must be at most {MAX_EXPRESSION} characters")
    match = EXPRESSION.match(expr)
    if match is None:
        raise InvalidArgument.field(
            name, "must be <key><operator><value> with an operator among = != < <= > >= ~, e.g. score>=10"
        )
    key, op, raw = match.group(1), match.group(2), match.group(3).strip()
    definition = catalog.get(key)
    if definition is None:
        raise InvalidArgument.field(name, f"{key} is not a custom field of {entity}s in this tenant")
    allowed = OPERATORS[definition.type]
    if op not in allowed:
        raise InvalidArgument.field(
            name, f"{key} is a {definition.type} field; use one of {' '.join(allowed)}, not {op}"
        )
    column: ColumnElement[Any] = VALUE_COLUMNS[definition.type].expression
    single = definition.type != MULTI_SELECT
    if raw == "":
        if op not in ("=", "!="):
            raise InvalidArgument.field(name, f"{_NAMES[op]} needs a value")
        return Condition(entity, key, None, column, negate=op == "=", seeks=True, single=single)
    try:
        operand = _operand(definition, op, raw)
    except ValueError as exc:
        raise InvalidArgument.field(name, str(exc)) from None
    test: Callable[[ColumnElement[Any]], ColumnElement[bool]]
    if op == "~":
        pattern = f"%{_escape_like(operand.lower())}%"

        def test(c: ColumnElement[Any]) -> ColumnElement[bool]:
            return func.lower(c).like(pattern, escape="\\")
    else:
        compare = _COMPARE[op]

        def test(c: ColumnElement[Any]) -> ColumnElement[bool]:
            return compare(c, operand)  # type: ignore[no-any-return]

    return Condition(entity, key, test, column, negate=op == "!=", seeks=op in ("=", "!="), single=single)


def parse_conditions(entity: str, exprs: Sequence[str], catalog: Catalog) -> list[Condition]:
    """Every `custom_filter` entry parsed; all invalid entries are reported together."""
    v = Violations()
    if len(exprs) > MAX_FILTERS:
        v.add(FILTER_FIELD, f"at most {MAX_FILTERS} conditions")
        v.raise_if_any()
    conditions: list[Condition] = []
    for i, expr in enumerate(exprs):
        try:
            conditions.append(parse_condition(entity, expr, i, catalog))
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
    v.raise_if_any()
    return conditions


class Unindexed(ColumnElement[Any]):
    """A column the SQLite planner must not seek on (`+column`), so that a per-record probe uses the primary
    key (tenant, entity, record, key) instead of range-scanning a value index for every record."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column
        self.type = column.type


@compiles(Unindexed)
def _unindexed(element: Unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column, **kw)


@compiles(Unindexed, "sqlite")
def _unindexed_sqlite(element: Unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.column, **kw)


def matching_records(c: Condition) -> Select[Any]:
    """The ids of the records `c` selects before negation, from the typed index."""
    v = CustomFieldValue
    test = v.ordinal == 0 if c.test is None else c.test(c.column)
    return select(v.record_id).where(v.tenant_id == require_tenant(), v.entity == c.entity, v.key == c.key, test)


def probe(c: Condition) -> ColumnElement[bool]:
    """`c` (before negation) as a probe of each record: EXISTS on the primary key."""
    v = CustomFieldValue
    model = ENTITIES[c.entity]
    test = v.ordinal == 0 if c.test is None else c.test(c.column if c.seeks else Unindexed(c.column))
    return (
        select(literal(1))
        .where(v.tenant_id == require_tenant(), v.entity == c.entity, v.record_id == model.id, v.key == c.key, test)
        .exists()
    )


def joined(c: Condition, name: str) -> ColumnElement[bool]:
    """`c` (positive, on a single-valued field) as the join condition of the record's own index row, an
    alias `name` of the value table that the statement adds to its FROM: an inner join, which never repeats
    a record (one row per record and key, at ordinal 0, the primary key says so).

    PostgreSQL plans a join well: it walks the list's order probing the primary key when matches are
    dense, or hashes the matching values when they are few. As a semi-join (EXISTS) it misjudged a range
    (it multiplies the key's share of the rows by the share of values in range, which already leaves out
    the other keys' rows: a third of the true count with three custom fields), hashed and de-duplicated
    tens of thousands of values for a page of 50, and a filter with a tag took 40 to 200 ms at 100k."""
    v = aliased(CustomFieldValue, name=name)
    model = ENTITIES[c.entity]
    own = (v.tenant_id == require_tenant(), v.entity == c.entity, v.record_id == model.id, v.key == c.key)
    column: ColumnElement[Any] = getattr(v, cast(Any, c.column).key)
    return and_(*own, v.ordinal == 0, *(() if c.test is None else (c.test(column),)))


def condition_clause(c: Condition, ids: list[str] | None = None, *, per_record: bool = True) -> ColumnElement[bool]:
    """The where-clause of `c`: `id IN (<ids>)` when the matching ids are known (a few of them), a per-record
    EXISTS probe when the list scans an index in its own order and stops at a full page (`per_record`), else
    `id IN (<the matching ids from the value index>)`."""
    model = ENTITIES[c.entity]
    if ids is not None:
        clause = model.id.in_(ids)
    elif per_record:
        clause = probe(c)
    else:
        clause = model.id.in_(matching_records(c))
    return ~clause if c.negate else clause


async def condition_clauses(
    session: AsyncSession, conditions: Sequence[Condition], *, ordered_by_index: bool = True
) -> list[ColumnElement[bool]]:
    """The where-clauses of `conditions`, each planned by how many records it matches: one bounded read of
    the typed index finds the matching ids; when they are few (<= SMALL_SET) the list selects them by id.
    Otherwise, when the list is read in an index's order (`ordered_by_index`) each record it reaches is
    probed and a page fills after a few probes; when it is not (a custom sort must see every match), the
    matching ids come from the value index."""
    clauses: list[ColumnElement[bool]] = []
    postgres = session.get_bind().dialect.name == "postgresql"
    for i, c in enumerate(conditions):
        ids = list((await session.execute(matching_records(c).limit(SMALL_SET + 1))).scalars())
        few = ids if len(ids) <= SMALL_SET else None
        if few is None and postgres and c.single and not c.negate:
            clauses.append(joined(c, f"custom_filter_{i}"))
        else:
            clauses.append(condition_clause(c, few, per_record=ordered_by_index))
    return clauses


def custom_filter_clause(entity: str, expr: str, index: int, catalog: Catalog) -> ColumnElement[bool]:
    """`custom_filter[index]` as one where-clause (a per-record probe); InvalidArgument naming it if invalid."""
    return condition_clause(parse_condition(entity, expr, index, catalog))


async def filter_clauses(
    session: AsyncSession, entity: str, exprs: Sequence[str], *, ordered_by_index: bool = True
) -> list[ColumnElement[bool]]:
    """`custom_filter` of a list request as where-clauses (none when it is empty)."""
    if not exprs:
        return []
    conditions = parse_conditions(entity, exprs, await Catalog.for_reading(session, entity))
    return await condition_clauses(session, conditions, ordered_by_index=ordered_by_index)


# --- sorting ------------------------------------------------------------------------------------------

# What a record without a value sorts as: after every real value ascending (before them descending). Only a
# record holding exactly the placeholder ties with those without a value; the id still orders them.
_MISSING: dict[str, Any] = {
    TEXT: "\U0010ffff",
    SELECT: "\U0010ffff",
    NUMBER: sys.float_info.max,
    DATE: date.max,
    BOOLEAN: 2,
}
SORT_KINDS = {
    TEXT: ordering.TEXT,
    SELECT: ordering.TEXT,
    NUMBER: ordering.FLOAT,
    DATE: ordering.DATE,
    BOOLEAN: ordering.INT,
}


def custom_sort_key(entity: str, name: str, catalog: Catalog, field: str = "order_by") -> SortField:
    """The sort field of `custom.<key>`: the record's value read from the index by primary key (one probe per
    record), never NULL (see _MISSING). A violation on `field` when the key is not a sortable custom field of
    the entity."""
    key = name.removeprefix(SORT_PREFIX)
    definition = catalog.get(key)
    if definition is None:
        raise InvalidArgument.field(field, f"cannot sort by {name!r}: {key} is not a custom field of {entity}s")
    if definition.type == MULTI_SELECT:
        raise InvalidArgument.field(field, f"cannot sort by {name!r}: a multi_select field has no single value")
    model = ENTITIES[entity]
    v = CustomFieldValue
    column: ColumnElement[Any] = VALUE_COLUMNS[definition.type].expression
    if definition.type == BOOLEAN:
        column = case((column.is_(True), 1), else_=0)
    value = (
        select(column)
        .where(
            v.tenant_id == model.tenant_id,
            v.entity == entity,
            v.key == key,
            v.record_id == model.id,
            v.ordinal == 0,
        )
        .correlate(model)
        .scalar_subquery()
    )
    missing = literal(_MISSING[definition.type], type_=column.type)
    return SortField(func.coalesce(value, missing), SORT_KINDS[definition.type])


# --- a page ordered by one custom field, from its value index ------------------------------------------

VALUED, MISSING = "v", "m"  # the two runs of such an order, as a page token names them


def index_ordered(order_by: str) -> bool:
    """Whether a list in `order_by` is read by `contact_page` (one custom key and nothing else)."""
    names = [n for n in order_by.split(",") if n.strip()]
    return len(names) == 1 and names[0].strip().lstrip("-").startswith(SORT_PREFIX)


async def contact_page(
    session: AsyncSession,
    keys: Sequence[SortKey],
    where: Sequence[ColumnElement[bool]],
    *,
    page_size: int,
    page_token: str,
    filters: dict[str, Any],
) -> tuple[list[Any], str] | None:
    """crm_customer.search's pager for `order_by=custom.<key>` alone (ascending or descending): the records
    with a value come from the typed index in (value, id) order and stop at a full page, so a page costs the
    same at 100k contacts as at 100, where sorting the coalesced value (`custom_sort_key`) read and sorted
    every contact of the tenant. The records without a value follow (ascending) or precede (descending) in
    id order, as `custom_sort_key` orders them. None for any other order (a custom key among others)."""
    if len(keys) != 1 or not keys[0].name.startswith(SORT_PREFIX):
        return None
    definition = (await Catalog.for_reading(session, CONTACT)).get(keys[0].name.removeprefix(SORT_PREFIX))
    if definition is None or definition.type == MULTI_SELECT:
        return None  # custom_sort_key has refused it already
    descending = keys[0].descending
    kind = ordering.BOOL if definition.type == BOOLEAN else SORT_KINDS[definition.type]
    bound = {**filters, "__order_by": keys[0].spelled}
    size = pagination.page_size(page_size)
    runs = [MISSING, VALUED] if descending else [VALUED, MISSING]
    start = pagination.decode_key(page_token, bound, 3) if page_token else None
    if start is not None and start[0] not in runs:
        raise InvalidArgument.field("page_token", "is not a token this service issued")
    rows: list[Any] = []
    for run in runs[runs.index(start[0]) :] if start else runs:
        after = start if start is not None and start[0] == run and start[2] else None
        start = None
        wanted = size - len(rows)
        found, values = await _run(session, run, definition, kind, where, after, descending, wanted + 1)
        if len(found) > wanted:
            if wanted == 0:  # the page is full at the end of the run before: the next page starts this run
                return rows, pagination.encode_token([run, "", ""], bound)
            rows.extend(found[:wanted])
            last = ordering.spell(kind, values[wanted - 1]) if run == VALUED else ""
            return rows, pagination.encode_token([run, last, rows[-1].id], bound)
        rows.extend(found)
    return rows, ""


async def _run(
    session: AsyncSession,
    run: str,
    definition: Definition,
    kind: str,
    where: Sequence[ColumnElement[bool]],
    after: list[str] | None,
    descending: bool,
    limit: int,
) -> tuple[list[Any], list[Any]]:
    """Up to `limit` contacts of one run after the token's position, and (valued run) their values."""
    position: Any = None
    if after is not None and run == VALUED:
        try:
            position = (ordering.read(kind, after[1]), after[2])
        except (ValueError, TypeError):
            raise InvalidArgument.field("page_token", "is not a token this service issued") from None
    elif after is not None:
        position = after[2]
    stmt = run_statement(run, definition, where, position, descending).limit(limit)
    if run == VALUED:
        result = (await session.execute(stmt)).all()
        return [r[0] for r in result], [r[1] for r in result]
    return list((await session.execute(stmt)).scalars()), []


def run_statement(
    run: str, definition: Definition, where: Sequence[ColumnElement[bool]], after: Any, descending: bool
) -> Select[Any]:
    """The contacts of one run of a `custom.<key>` order, in that order, after `after` ((value, id) for
    the valued run, an id for the missing one; None from the start). The valued run reads the typed
    index (tenant_id, entity, key, <value>, record_id) in order and joins each contact by primary key."""
    v = aliased(CustomFieldValue)  # its own name: custom_filter's probes of the table correlate to contacts only
    model = ENTITIES[CONTACT]
    column: ColumnElement[Any] = getattr(v, VALUE_COLUMNS[definition.type].key)
    own = (v.tenant_id == require_tenant(), v.entity == CONTACT, v.key == definition.key, v.ordinal == 0)
    if run == VALUED:
        stmt = (
            select(model, column)
            .join(v, and_(v.tenant_id == model.tenant_id, v.record_id == model.id))
            .where(*own, *where)
        )
        if after is not None:
            value, last_id = after
            position = tuple_(column, v.record_id)
            mark = tuple_(literal(value, type_=column.type), literal(last_id, type_=v.record_id.type))
            stmt = stmt.where(position < mark if descending else position > mark)
        order = [column.desc(), v.record_id.desc()] if descending else [column.asc(), v.record_id.asc()]
        return stmt.order_by(*order)
    has_value = select(literal(1)).where(*own, v.record_id == model.id).exists()
    stmt = select(model).where(*where, ~has_value)
    if after is not None:
        stmt = stmt.where(model.id < after if descending else model.id > after)
    return stmt.order_by(model.id.desc() if descending else model.id.asc())


async def contact_sort(session: AsyncSession, name: str) -> SortField | None:
    """crm_customer.search's sort provider: `custom.<key>` of contacts; None for other names."""
    if not name.startswith(SORT_PREFIX):
        return None
    return custom_sort_key(CONTACT, name, await Catalog.for_reading(session, CONTACT))


async def contact_filter(session: AsyncSession, request: Any) -> list[ColumnElement[bool]]:
    """crm_customer.search's filter provider: `request.custom_filter` of a contact list."""
    exprs = list(getattr(request, FILTER_FIELD, None) or ())
    order_by = str(getattr(request, "order_by", "") or "")
    # A custom key among others sorts every match (IN lists); alone, or no custom key, the list is read in
    # an index's order and stops at a full page (per-record probes).
    sorts_every_match = SORT_PREFIX in order_by and not index_ordered(order_by)
    return await filter_clauses(session, CONTACT, exprs, ordered_by_index=not sorts_every_match)


search.register_filter(contact_filter)
search.register_sort(contact_sort)
search.register_pager(contact_page)
