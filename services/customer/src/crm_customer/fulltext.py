"""Full-text and tag predicates of the contact list, as SQL each database runs well.

`TextMatch(terms)` is true for a contact whose document (crm_customer.search_document) matches every term:
  - SQLite: `contacts.search_rowid IN (SELECT rowid FROM contacts_fts WHERE contacts_fts MATCH '"t1" AND ..')`
    over the FTS5 trigram table; a term of 3+ characters is a phrase (a substring), a 1-character term
    `" x "` (a whole token) and a 2-character term `" xy"` (a token prefix), the spaces being part of the
    trigrams;
  - PostgreSQL: `search_text LIKE '%t%'` (pg_trgm GIN) for 3+ characters, and `search_vector @@ 'x'` /
    `'xy':*` (GIN over the document's tokens) for shorter terms.

SQLite's planner cannot tell a rare term from a common one, so `sqlite_plan` measures first: it counts (up
to a cap) the FTS matches and each tag's contacts, and lets at most one list drive the query when walking
it is cheaper than walking an index in sort order until a page is full. Every other list is a filter
(`+column IN (...)`: computed once and probed, never driving), and a common text (more than FTS_CAP
matches) is tested row by row with LIKE on the document, since the walk meets a match every few rows.
PostgreSQL plans from its own statistics.

On PostgreSQL, row-level security lets an index serve a condition only when its operator is LEAKPROOF:
migration 0002 marks `textlike` and `ts_match_vq` so when it runs as a superuser (see docs/architecture.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, bindparam, intersect, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean, String, TypeDecorator

from crm_customer.indexing import ContactTag
from crm_customer.models import Contact
from crm_customer.search_document import is_short
from crm_kit.context import require_tenant

FTS_CAP = 5_000  # more FTS matches than this: a common text, tested row by row
TAG_CAP = 20_000  # tags on more contacts than this never drive
LOOKUP_COST = 1.3  # a list-driven row (a lookup, then a sort) against a row walked in index order
TENANT_SIZE_TTL = 60.0  # seconds a tenant's contact count is reused for planning


def fts_phrase(term: str) -> str:
    """A query term as an FTS5 trigram phrase."""
    return '"' + _spaced(term).replace('"', '""') + '"'


def _spaced(term: str) -> str:
    """Short terms carry the token boundary: " x " (a whole 1-character token), " xy" (a token prefix)."""
    if is_short(term):
        return f" {term} " if len(term) == 1 else f" {term}"
    return term


def fts_query(terms: Sequence[str]) -> str:
    return " AND ".join(fts_phrase(t) for t in terms)


def like_pattern(term: str) -> str:
    escaped = _spaced(term).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def ts_lexeme(term: str) -> str:
    """A 1-character term as a whole lexeme, a 2-character term as a prefix (PostgreSQL tsquery syntax)."""
    lexeme = "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"
    return lexeme if len(term) == 1 else lexeme + ":*"


# How a SQLite statement tests the terms (PostgreSQL always plans for itself):
DRIVE = "drive"  # the FTS matches drive the query (an IN list the planner may start from)
LIST = "list"  # the FTS matches are computed once and probed per row (+rowid IN ...)
ROW = "row"  # each row's document is tested with LIKE (no FTS: for rows already narrowed by an index)
MODES = (DRIVE, LIST, ROW)


class _Term(TypeDecorator[str]):
    """A query term, spelled for the database and the way the statement tests it."""

    impl = String
    cache_ok = True

    def __init__(self, short: bool, row: bool) -> None:
        super().__init__()
        self.short = short
        self.row = row

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return like_pattern(value) if self.row else fts_phrase(value)
        return ts_lexeme(value) if self.short else like_pattern(value)


class TextMatch(ColumnElement[bool]):
    """Every term of a query matches the contact's document (see the module docstring)."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a predicate: never rendered as "(...) = 1" where booleans are integers
    _traverse_internals = [
        ("terms", InternalTraversal.dp_clauseelement_tuple),
        ("mode", InternalTraversal.dp_string),
    ]

    def __init__(self, terms: Sequence[str], *, mode: str = DRIVE) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown text match mode {mode!r}")
        self.mode = mode
        # Each term's kind is part of the statement's shape (and of its cache key, through its type).
        self.terms = tuple(bindparam(None, t, type_=_Term(is_short(t), mode == ROW), unique=True) for t in terms)


@compiles(TextMatch, "sqlite")
def _text_sqlite(element: TextMatch, compiler: SQLCompiler, **kw: Any) -> str:
    if element.mode == ROW:
        document = compiler.process(Contact.__table__.c.search_text, **kw)
        tests = (f"{document} LIKE {compiler.process(t, **kw)} ESCAPE '\\'" for t in element.terms)
        return "(" + " AND ".join(tests) + ")"
    rowid = compiler.process(Contact.__table__.c.search_rowid, **kw)
    query = " || ' AND ' || ".join(compiler.process(t, **kw) for t in element.terms)
    plus = "+" if element.mode == LIST else ""
    return f"{plus}{rowid} IN (SELECT rowid FROM contacts_fts WHERE contacts_fts MATCH {query})"


@compiles(TextMatch, "postgresql")
def _text_postgres(element: TextMatch, compiler: SQLCompiler, **kw: Any) -> str:
    document = compiler.process(Contact.__table__.c.search_text, **kw)
    parts = []
    for term in element.terms:
        value = compiler.process(term, **kw)
        if isinstance(term.type, _Term) and term.type.short:
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


def tag_match(tags: Sequence[str], *, drive: bool = True) -> ColumnElement[bool]:
    """The contact carries every one of `tags`: one list from the tag index (their INTERSECT, for several,
    each part a range of the (tenant_id, tag, contact_id) key)."""
    tenant = require_tenant()
    parts = [select(ContactTag.contact_id).where(ContactTag.tenant_id == tenant, ContactTag.tag == t) for t in tags]
    column: Any = Contact.id if drive else Unindexed(Contact.id)
    return column.in_(parts[0] if len(parts) == 1 else intersect(*parts))  # type: ignore[no-any-return]


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
    return int(await session.scalar(stmt, {"q": fts_query(terms), "cap": FTS_CAP + 1}) or 0)


async def _count_tag(session: AsyncSession, tag: str) -> int:
    stmt = text("SELECT count(*) FROM (SELECT 1 FROM contact_tags WHERE tenant_id = :t AND tag = :tag LIMIT :cap)")
    return int(await session.scalar(stmt, {"t": require_tenant(), "tag": tag, "cap": TAG_CAP + 1}) or 0)


@dataclass(frozen=True)
class SqlitePlan:
    """What drives a SQLite list query ("q", "tags" or None: an index in sort order), and how the
    text terms are tested."""

    drive: str | None
    text_mode: str

    @property
    def tags_drive(self) -> bool:
        return self.drive == "tags"


async def sqlite_plan(
    session: AsyncSession,
    terms: Sequence[str],
    tags: Sequence[str],
    *,
    narrowed: bool,
    other_density: float,
    page: int,
) -> SqlitePlan:
    """Measure the lists (capped counts) and choose.

    Walking the sort index visits about page / density rows (every filter's share multiplied; at most the
    tenant's size, or NARROWED_WALK when an owner, account or external id narrows it through its own
    index); walking the shortest list visits its length, then sorts. A common text (more than FTS_CAP
    matches) never drives nor is listed: its few rows per page are cheaper to test one by one (LIKE)."""
    q_count = await _count_fts(session, terms) if terms else 0
    dense_text = q_count > FTS_CAP
    tag_counts = [await _count_tag(session, t) for t in tags]
    # The tags' intersection is at most as long as the rarest tag's list.
    lists = {"tags": min(tag_counts)} if tag_counts else {}
    if terms and not dense_text:
        lists["q"] = q_count
    if narrowed or not lists:
        return SqlitePlan(None, ROW if dense_text else LIST)
    size = max(await _tenant_size(session), 1)
    density = other_density  # filters taken as independent
    for count in (*tag_counts, q_count if terms else size):
        density *= min(1.0, count / size)
    walk = min(float(size), page / max(density, 1.0 / size))
    name, shortest = min(lists.items(), key=lambda item: item[1])
    drive = name if shortest <= TAG_CAP and shortest * LOOKUP_COST < walk else None
    if drive == "q":
        return SqlitePlan(drive, DRIVE)
    return SqlitePlan(drive, ROW if dense_text else LIST)


async def purge_deleted_terms(session: AsyncSession) -> None:
    """Rewrite the SQLite FTS index without the entries of deleted or changed documents, which otherwise stay
    in its segments until they are merged (erasure calls this after removing a person). PostgreSQL's
    VACUUM does the same for its indexes."""
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(text("INSERT INTO contacts_fts(contacts_fts) VALUES ('optimize')"))
