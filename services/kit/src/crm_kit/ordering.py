"""Sorted lists with stable keyset pagination.

A list request names its order as `order_by`: comma-separated keys, "-" for descending, e.g.
"last_name,first_name" or "-update_time". Keys are whitelisted by a resolver (name -> SortField), so an
unknown key is a field violation on `order_by`, never SQL. The id is always the last key, in the
direction of the key before it, so the order is total: a page token carries the last row's sort values
and id, and the next page starts strictly after them. Pages never repeat or skip a row, even when many
rows share a sort value, and the query stays an index range scan (`(tenant_id, key, id)` indexes).

    keys = parse_order_by(request.order_by, resolve, default="-create_time")
    rows, token = await keyset_page(session, stmt, keys, Model.id, page_size=..., page_token=..., filters=...)

Sort columns must never be NULL (coalesce an expression that can be).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, SQLColumnExpression, and_, literal, or_, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from crm_kit import pagination
from crm_kit.errors import InvalidArgument

TEXT = "text"
INT = "int"
FLOAT = "float"
DATETIME = "datetime"
DATE = "date"
BOOL = "bool"
KINDS = (TEXT, INT, FLOAT, DATETIME, DATE, BOOL)
MAX_KEYS = 3


@dataclass(frozen=True)
class SortField:
    """A sortable expression and the kind of its values (how a page token spells them)."""

    column: SQLColumnExpression[Any]
    kind: str = TEXT


@dataclass(frozen=True)
class SortKey:
    name: str
    column: SQLColumnExpression[Any]
    kind: str = TEXT
    descending: bool = False

    @property
    def spelled(self) -> str:
        return f"-{self.name}" if self.descending else self.name


# A name resolves to one sort expression, or to several (e.g. "has a value" then the value) sorted alike.
Resolver = Callable[[str], SortField | Sequence[SortField] | None]


def split_order_by(value: str, *, default: str, field: str = "order_by") -> list[tuple[str, bool]]:
    """[(name, descending)] of `value` ("a,-b"; `default` when empty); a violation on `field` when it is not
    comma-separated names, names one twice, or more than MAX_KEYS."""
    text = "".join(value.split()) or default
    parts = text.split(",")
    if any(not p.lstrip("+-") or len(p) - len(p.lstrip("+-")) > 1 for p in parts):
        raise InvalidArgument.field(field, "must be comma-separated field names, each optionally prefixed by -")
    if len(parts) > MAX_KEYS:
        raise InvalidArgument.field(field, f"at most {MAX_KEYS} sort keys")
    out = [(p.lstrip("+-"), p.startswith("-")) for p in parts]
    names = [name for name, _ in out]
    for name in names:
        if names.count(name) > 1:
            raise InvalidArgument.field(field, f"sorts by {name!r} twice")
    return out


def unknown_sort(name: str, known: Iterable[str] = (), field: str = "order_by") -> InvalidArgument:
    choices = ", ".join(known)
    hint = f"; use one of: {choices}" if choices else ""
    return InvalidArgument.field(field, f"cannot sort by {name!r}{hint}")


def sort_keys(name: str, descending: bool, found: SortField | Sequence[SortField]) -> list[SortKey]:
    fields = [found] if isinstance(found, SortField) else list(found)
    if not fields:
        raise ValueError(f"sort field {name!r} resolved to no expression")
    keys: list[SortKey] = []
    for i, f in enumerate(fields):
        if f.kind not in KINDS:
            raise ValueError(f"sort field {name!r} has unknown kind {f.kind!r}")
        keys.append(SortKey(name if i == 0 else f"{name}#{i}", f.column, f.kind, descending))
    return keys


def parse_order_by(
    value: str,
    resolve: Resolver,
    *,
    default: str,
    known: Iterable[str] = (),
    field: str = "order_by",
) -> list[SortKey]:
    """The sort keys `value` names (`default` when empty); unknown or repeated keys are a violation on
    `field` listing `known`."""
    keys: list[SortKey] = []
    for name, descending in split_order_by(value, default=default, field=field):
        found = resolve(name)
        if found is None:
            raise unknown_sort(name, known, field)
        keys.extend(sort_keys(name, descending, found))
    return keys


def order_clauses(keys: Sequence[SortKey], id_column: SQLColumnExpression[Any]) -> list[ColumnElement[Any]]:
    out: list[ColumnElement[Any]] = [k.column.desc() if k.descending else k.column.asc() for k in keys]
    last_desc = keys[-1].descending if keys else False
    out.append(id_column.desc() if last_desc else id_column.asc())
    return out


def after_clause(
    keys: Sequence[SortKey], id_column: SQLColumnExpression[Any], values: Sequence[Any], last_id: str
) -> ColumnElement[bool]:
    """Rows strictly after (values..., last_id) in the order of `order_clauses`."""
    columns = [_expression(c) for c in (*(k.column for k in keys), id_column)]
    bound = [literal(v, type_=c.type) for v, c in zip([*values, last_id], columns, strict=True)]
    directions = [*(k.descending for k in keys), keys[-1].descending if keys else False]
    if len(set(directions)) == 1:
        # One direction: a row-value comparison, which both databases run as an index range scan.
        left, right = tuple_(*columns), tuple_(*bound)
        return left < right if directions[0] else left > right
    alternatives: list[ColumnElement[bool]] = []
    for i, (column, value, desc) in enumerate(zip(columns, bound, directions, strict=True)):
        equal_before = [columns[j] == bound[j] for j in range(i)]
        beyond = column < value if desc else column > value
        alternatives.append(and_(*equal_before, beyond))
    return or_(*alternatives)


def _expression(column: SQLColumnExpression[Any]) -> ColumnElement[Any]:
    """The SQL expression behind a mapped attribute (or the expression itself)."""
    clause = getattr(column, "__clause_element__", None)
    return clause() if clause is not None else column  # type: ignore[return-value]


def spell(kind: str, value: Any) -> str:
    """A sort value as a page token holds it."""
    if kind == DATETIME:
        if not isinstance(value, datetime):
            raise TypeError(f"sort value {value!r} is not a datetime")
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if kind == DATE:
        return value.isoformat() if isinstance(value, date) else str(value)[:10]
    if kind == BOOL:
        return "1" if value else "0"
    if kind == FLOAT:
        return repr(float(value))
    if kind == INT:
        return str(int(value))
    return "" if value is None else str(value)


def read(kind: str, text: str) -> Any:
    """A sort value back from `spell`; ValueError or TypeError when the text is not one."""
    if kind == DATETIME:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            raise ValueError("naive datetime")
        return parsed
    if kind == DATE:
        return date.fromisoformat(text)
    if kind == BOOL:
        if text not in ("0", "1"):
            raise ValueError(text)
        return text == "1"
    if kind == FLOAT:
        return float(text)
    if kind == INT:
        return int(text)
    return text


def encode_after(keys: Sequence[SortKey], values: Sequence[Any], last_id: str, filters: dict[str, Any]) -> str:
    parts = [spell(k.kind, v) for k, v in zip(keys, values, strict=True)]
    return pagination.encode_token([*parts, last_id], _bound_filters(keys, filters))


def decode_after(token: str, keys: Sequence[SortKey], filters: dict[str, Any]) -> tuple[list[Any], str] | None:
    """(sort values, id) after which the next page starts, or None for the first page."""
    parts = pagination.decode_key(token, _bound_filters(keys, filters), len(keys) + 1)
    if parts is None:
        return None
    try:
        values = [read(k.kind, p) for k, p in zip(keys, parts, strict=False)]
    except (ValueError, TypeError):
        raise InvalidArgument.field("page_token", "is not a token this service issued") from None
    return values, parts[-1]


def _bound_filters(keys: Sequence[SortKey], filters: dict[str, Any]) -> dict[str, Any]:
    """A token is only good for the same filters and the same order."""
    return {**filters, "__order_by": ",".join(k.spelled for k in keys)}


async def keyset_page(
    session: AsyncSession,
    stmt: Select[Any],
    keys: Sequence[SortKey],
    id_column: SQLColumnExpression[Any],
    *,
    page_size: int,
    page_token: str,
    filters: dict[str, Any],
) -> tuple[list[Any], str]:
    """One page of `stmt` (a select of one entity, already filtered) in the order of `keys`, and the token of
    the next page ("" on the last page)."""
    size = pagination.page_size(page_size)
    after = decode_after(page_token, keys, filters)
    if after is not None:
        stmt = stmt.where(after_clause(keys, id_column, *after))
    labels = [_expression(k.column).label(f"_sort{i}") for i, k in enumerate(keys)]
    stmt = stmt.add_columns(*labels).order_by(*order_clauses(keys, id_column)).limit(size + 1)
    result = (await session.execute(stmt)).all()
    rows = [r[0] for r in result]
    token = ""
    if len(result) > size:
        last = result[size - 1]
        rows = rows[:size]
        token = encode_after(keys, list(last[1:]), rows[-1].id, filters)
    return rows, token
