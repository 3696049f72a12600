"""Full-text and tag predicates of the contact list, as SQL each database runs well.

`TextMatch(terms)` is true for a contact whose document (crm_customer.search_document) matches every term:
  - SQLite: `contacts.search_rowid IN (SELECT rowid FROM contacts_fts WHERE contacts_fts MATCH '"t1" AND ..')`
    over the FTS5 trigram table; a term of 3+ characters is a phrase (a substring), a 1-character term
    `" x "` (a whole token) and a 2-character term `" xy"` (a token prefix), the spaces being part of the
    trigrams;
  - PostgreSQL: `search_text LIKE '%t%'` (pg_trgm GIN) for 3+ characters, and `search_vector @@ 'x'` /
    `'xy':*` (GIN over the document's tokens) for shorter terms.

SQLite's planner cannot tell a rare term from a common one, so `sqlite_drivers` measures: it counts (up to a
cap) the FTS matches and each tag's contacts, and picks at most one of these lists to drive the query when
walking it is cheaper than walking an index in sort order until a page is full; every other list becomes
a filter (`+column IN (...)`, which SQLite evaluates once and probes, instead of using it to drive).
PostgreSQL plans from its own statistics.

On PostgreSQL, row-level security lets an index serve a condition only when its operator is LEAKPROOF:
migration 0002 marks `textlike` and `ts_match_vq` so when it runs as a superuser (see docs/architecture.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean, String, TypeDecorator

from crm_customer.indexing import ContactTag
from crm_customer.models import Contact
from crm_customer.search_document import is_short
from crm_kit.context import require_tenant

COUNT_CAP = 20_000  # lists longer than this never drive
LOOKUP_COST = 1.3  # a list-driven row (a lookup, then a sort) against a row walked in index order
TENANT_SIZE_TTL = 60.0  # seconds a tenant's contact count is reused for planning


def fts_phrase(term: str) -> str:
    """A query term as an FTS5 trigram phrase."""
    if is_short(term):
        term = f" {term} " if len(term) == 1 else f" {term}"
    return '"' + term.replace('"', '""') + '"'


def fts_query(terms: Sequence[str]) -> str:
    return " AND ".join(fts_phrase(t) for t in terms)


def like_pattern(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def ts_lexeme(term: str) -> str:
    """A 1-character term as a whole lexeme, a 2-character term as a prefix (PostgreSQL tsquery syntax)."""
    lexeme = "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"
    return lexeme if len(term) == 1 else lexeme + ":*"


class _Term(TypeDecorator[str]):
    """A query term, spelled for the database the statement runs on."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return fts_phrase(value)
        return ts_lexeme(value) if is_short(value) else like_pattern(value)


class _LongTerm(_Term):
    cache_ok = True


class _ShortTerm(_Term):
    cache_ok = True


class TextMatch(ColumnElement[bool]):
    """Every term of a query matches the contact's document (see the module docstring)."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a predicate: never rendered as "(...) = 1" where booleans are integers
    _traverse_internals = [
        ("terms", InternalTraversal.dp_clauseelement_tuple),
        ("drive", InternalTraversal.dp_boolean),
    ]

    def __init__(self, terms: Sequence[str], *, drive: bool = True) -> None:
        # The short/long kind of each term is part of the statement's shape (and its cache key).
        self.terms = tuple(
            bindparam(None, t, type_=_ShortTerm() if is_short(t) else _LongTerm(), unique=True) for t in terms
        )
        self.drive = drive


@compiles(TextMatch, "sqlite")
def _text_sqlite(element: TextMatch, compiler: SQLCompiler, **kw: Any) -> str:
    rowid = compiler.process(Contact.__table__.c.search_rowid, **kw)
    query = " || ' AND ' || ".join(compiler.process(t, **kw) for t in element.terms)
    plus = "" if element.drive else "+"
    return f"{plus}{rowid} IN (SELECT rowid FROM contacts_fts WHERE contacts_fts MATCH {query})"


@compiles(TextMatch, "postgresql")
def _text_postgres(element: TextMatch, compiler: SQLCompiler, **kw: Any) -> str:
    document = compiler.process(Contact.__table__.c.search_text, **kw)
    parts = []
    for term in element.terms:
        value = compiler.process(term, **kw)
        if isinstance(term.type, _ShortTerm):
            parts.append(f"contacts.search_vector @@ CAST({value} AS tsquery)")
        else:
            parts.append(f"{document} LIKE {value}")
    return "(" + " AND ".join(parts) + ")"


class Unindexed(ColumnElement[Any]):
    """`+column` on SQLite (no index on the column serves this condition), the column elsewhere."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: Any) -> None:
        self.column = column.__clause_element__() if hasattr(column, "__clause_element__") else column
        self.type = self.column.type


@compiles(Unindexed)
def _unindexed(element: Unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column, **kw)


@compiles(Unindexed, "sqlite")
def _unindexed_sqlite(element: Unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.column, **kw)


def tag_match(tag: str, *, drive: bool = True) -> ColumnElement[bool]:
    tagged = select(ContactTag.contact_id).where(ContactTag.tenant_id == require_tenant(), ContactTag.tag == tag)
    column: Any = Contact.id if drive else Unindexed(Contact.id)
    return column.in_(tagged)  # type: ignore[no-any-return]


# --- choosing what drives a SQLite query --------------------------------------------------------------

_tenant_sizes: dict[str, tuple[float, int]] = {}


async def _tenant_size(session: AsyncSession) -> int:
    tenant = require_tenant()
    cached = _tenant_sizes.get(tenant)
    now = time.monotonic()
    if cached is not None and now - cached[0] < TENANT_SIZE_TTL:
        return cached[1]
    stmt = text("SELECT count(*) FROM contacts WHERE tenant_id = :t")
    size = int(await session.scalar(stmt, {"t": tenant}) or 0)
    _tenant_sizes[tenant] = (now, size)
    return size


async def _count_fts(session: AsyncSession, terms: Sequence[str]) -> int:
    stmt = text("SELECT count(*) FROM (SELECT rowid FROM contacts_fts WHERE contacts_fts MATCH :q LIMIT :cap)")
    return int(await session.scalar(stmt, {"q": fts_query(terms), "cap": COUNT_CAP + 1}) or 0)


async def _count_tag(session: AsyncSession, tag: str) -> int:
    stmt = text("SELECT count(*) FROM (SELECT 1 FROM contact_tags WHERE tenant_id = :t AND tag = :tag LIMIT :cap)")
    return int(await session.scalar(stmt, {"t": require_tenant(), "tag": tag, "cap": COUNT_CAP + 1}) or 0)


async def sqlite_drivers(
    session: AsyncSession, terms: Sequence[str], tags: Sequence[str], *, other_density: float, page: int
) -> str | None:
    """Which list drives: "q", "tag:<tag>", or None (an index in sort order does, the lists filter).

    Walking the sort index visits about page / density rows (all filters' densities multiplied; capped at
    the tenant's size); walking the shortest list visits its length, then sorts."""
    lists: dict[str, int] = {}
    if terms:
        lists["q"] = await _count_fts(session, terms)
    for tag in tags:
        lists[f"tag:{tag}"] = await _count_tag(session, tag)
    if not lists:
        return None
    size = max(await _tenant_size(session), 1)
    density = other_density
    for count in lists.values():
        density *= min(1.0, count / size)
    walk = min(float(size), page / max(density, 1.0 / size))
    name, shortest = min(lists.items(), key=lambda item: item[1])
    if shortest > COUNT_CAP:
        return None
    return name if shortest * LOOKUP_COST < walk else None
