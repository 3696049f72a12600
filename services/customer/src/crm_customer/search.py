"""The contact list query: full text, structured filters, whitelisted sort orders and keyset pagination.

    stmt = await contact_query(session, request, principal)          # a Select of Contact, ordered
    rows, token = await list_contacts(session, request, principal)   # one page of it

`request` is a ListContactsRequest, or any object with some of its attributes (missing ones are empty), so
export and dedupe can run the very query a user sees. The caller's visibility (`crm_kit.access`: members
see only the contacts they own) is part of the query.

Full text (the document is crm_customer.search_document's; indexing.py keeps it on every write):
  - SQLite: the FTS5 trigram table `contacts_fts` (external content = contacts.search_text);
  - PostgreSQL: `search_text LIKE '%term%'` on a pg_trgm GIN index for terms of 3+ characters, and the
    generated tsvector `search_vector` (GIN) for shorter terms (token and token-prefix matches).
The FTS rows hold every tenant's contacts; the match is joined to `contacts`, whose tenant filter (and
row-level security) applies, so another tenant's rows never match.

Extension points (custom fields):
  - `register_filter(provider)`: `async provider(session, request) -> [where-clauses]`, e.g. for
    `request.custom_filter`;
  - `register_sort(provider)`: `async provider(session, name) -> SortField | [SortField] | None` for
    order_by names the built-in whitelist does not know (e.g. "custom.<key>"); None means "not mine";
  - `register_pager(pager)`: `async pager(session, keys, where, page_size=, page_token=, filters=) ->
    (rows, token) | None` reads a page of an order it can serve better than `keyset_page` (e.g. from an
    index of its own in order); None means "not mine".
Sort expressions must never be NULL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customer import indexing  # noqa: F401  (the write-path listeners the query relies on)
from crm_customer.fulltext import DRIVE, SqlitePlan, TextMatch, sqlite_plan, tag_match
from crm_customer.models import Contact, external_id_in
from crm_customer.rules import CLASSIFICATIONS, LIFECYCLE_STAGES
from crm_customer.search_document import MAX_QUERY_LENGTH, query_terms
from crm_kit import validation
from crm_kit.access import visible_to
from crm_kit.context import Principal
from crm_kit.errors import Violations
from crm_kit.ordering import (
    DATETIME,
    TEXT,
    SortField,
    SortKey,
    keyset_page,
    order_clauses,
    sort_keys,
    split_order_by,
    unknown_sort,
)
from crm_kit.pagination import DEFAULT_PAGE_SIZE
from crm_kit.protos import to_dict

DEFAULT_ORDER = "-create_time"
SORT_FIELDS: dict[str, SortField] = {
    "create_time": SortField(Contact.create_time, DATETIME),
    "update_time": SortField(Contact.update_time, DATETIME),
    "first_name": SortField(Contact.first_name, TEXT),
    "last_name": SortField(Contact.last_name, TEXT),
    "email": SortField(Contact.email, TEXT),
    "birthday": SortField(Contact.birthday, TEXT),
    "classification": SortField(Contact.classification, TEXT),
    "lifecycle_stage": SortField(Contact.lifecycle_stage, TEXT),
    "source": SortField(Contact.source, TEXT),
    "external_id": SortField(Contact.external_id, TEXT),
}
MAX_TAGS = 20
PAGING_FIELDS = ("page_size", "page_token")

FilterProvider = Callable[[AsyncSession, Any], Awaitable[Sequence[ColumnElement[bool]]]]
SortProvider = Callable[[AsyncSession, str], Awaitable[SortField | Sequence[SortField] | None]]
Page = tuple[list[Contact], str]
Pager = Callable[..., Awaitable[Page | None]]
_filter_providers: list[FilterProvider] = []
_sort_providers: list[SortProvider] = []
_pagers: list[Pager] = []


def register_filter(provider: FilterProvider) -> FilterProvider:
    """Add where-clauses to every contact list query (idempotent per provider)."""
    if provider not in _filter_providers:
        _filter_providers.append(provider)
    return provider


def register_sort(provider: SortProvider) -> SortProvider:
    """Resolve order_by names beyond SORT_FIELDS (idempotent per provider)."""
    if provider not in _sort_providers:
        _sort_providers.append(provider)
    return provider


def register_pager(pager: Pager) -> Pager:
    """Serve pages of the orders `pager` knows (idempotent per pager)."""
    if pager not in _pagers:
        _pagers.append(pager)
    return pager


# --- filters ------------------------------------------------------------------------------------------


def _get(request: Any, name: str, default: Any = "") -> Any:
    return getattr(request, name, default) if request is not None else default


def parse_time(v: Violations, field: str, value: str) -> datetime | None:
    """RFC 3339 (2025-01-31T08:00:00Z, +08:00 offsets) or a date (midnight UTC); None when empty."""
    text = value.strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), UTC)
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        v.add(field, "must be an RFC 3339 timestamp such as 2025-01-31T08:00:00Z, or a date YYYY-MM-DD")
        return None
    if parsed.tzinfo is None:
        v.add(field, "must include a time zone offset, such as Z or +08:00")
        return None
    return parsed.astimezone(UTC)


def _tags(v: Violations, request: Any) -> list[str]:
    tags = [" ".join(t.split()) for t in (*_get(request, "tags", ()), _get(request, "tag"))]
    tags = list(dict.fromkeys(t for t in tags if t))
    if len(tags) > MAX_TAGS:
        v.add("tags", f"at most {MAX_TAGS} tags")
    for i, tag in enumerate(tags):
        if len(tag) > 50:
            v.add(f"tags[{i}]", "must be at most 50 characters")
    return tags


def _choice(v: Violations, request: Any, field: str, choices: tuple[str, ...]) -> str:
    value = str(_get(request, field)).strip().lower()
    if value and value not in choices:
        v.add(field, f"must be one of: {', '.join(choices)}")
    return value


# Assumed share of contacts a weak filter keeps, for planning (SQLite): what the lists must beat.
WEAK_DENSITY = {"classification": 1 / 3, "lifecycle_stage": 1 / 5, "source": 1 / 4, "time": 1 / 2}
# Filters that narrow a tenant to a few thousand rows at most, through their own index.
STRONG = ("owner_id", "account_id", "external_id")


@dataclass
class Criteria:
    """A list request's filters: plain where-clauses, plus the full-text terms and tags, whose SQL depends
    on which of them drives the query."""

    where: list[ColumnElement[bool]] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    strong: bool = False
    density: float = 1.0  # the weak filters' assumed share

    def clauses(self, plan: SqlitePlan | None = None) -> list[ColumnElement[bool]]:
        """The where-clauses; without a plan every list may drive (PostgreSQL plans for itself)."""
        out = list(self.where)
        if self.terms:
            out.append(TextMatch(self.terms, mode=plan.text_mode if plan else DRIVE))
        if plan is None:  # one semi-join per tag: PostgreSQL estimates (and merges) them well
            out += [tag_match([t]) for t in self.tags]
        elif self.tags:  # SQLite: their INTERSECT, one list that drives or filters as planned
            out.append(tag_match(self.tags, drive=plan.tags_drive))
        return out


def criteria(request: Any, principal: Principal | None) -> Criteria:
    """The built-in filters of `request` (violations name the request field)."""
    v = Violations()
    c = Criteria(where=[visible_to(principal, Contact)])
    q = str(_get(request, "q"))
    if len(q) > MAX_QUERY_LENGTH:
        v.add("q", f"must be at most {MAX_QUERY_LENGTH} characters")
    else:
        c.terms = query_terms(q)
    for name in ("owner_id", "account_id"):
        value = validation.reference(v, name, str(_get(request, name)))
        if value:
            c.where.append(getattr(Contact, name) == value)
            c.strong = True
    for name, choices in (("classification", CLASSIFICATIONS), ("lifecycle_stage", LIFECYCLE_STAGES)):
        value = _choice(v, request, name, choices)
        if value:
            c.where.append(getattr(Contact, name) == value)
            c.density *= WEAK_DENSITY[name]
    source = " ".join(str(_get(request, "source")).split()).lower()
    if source:
        c.where.append(Contact.source == source)
        c.density *= WEAK_DENSITY["source"]
    external_id = str(_get(request, "external_id")).strip()
    if external_id:
        c.where.append(external_id_in(external_id))
        c.strong = True
    c.tags = _tags(v, request)
    for name, column, op in (
        ("created_after", Contact.create_time, "ge"),
        ("created_before", Contact.create_time, "lt"),
        ("updated_after", Contact.update_time, "ge"),
        ("updated_before", Contact.update_time, "lt"),
    ):
        moment = parse_time(v, name, str(_get(request, name)))
        if moment is not None:
            c.where.append(column >= moment if op == "ge" else column < moment)
            c.density *= WEAK_DENSITY["time"]
    v.raise_if_any()
    return c


def contact_filters(request: Any, principal: Principal | None) -> list[ColumnElement[bool]]:
    """The built-in filters of `request` as where-clauses, with no measuring (any database)."""
    return criteria(request, principal).clauses()


async def _sort_keys(session: AsyncSession, request: Any) -> list[SortKey]:
    keys: list[SortKey] = []
    for name, descending in split_order_by(str(_get(request, "order_by")), default=DEFAULT_ORDER):
        found: SortField | Sequence[SortField] | None = SORT_FIELDS.get(name)
        for provider in _sort_providers:
            if found is not None:
                break
            found = await provider(session, name)
        if found is None:
            raise unknown_sort(name, SORT_FIELDS)
        keys.extend(sort_keys(name, descending, found))
    return keys


async def _where(session: AsyncSession, request: Any, principal: Principal | None) -> list[ColumnElement[bool]]:
    c = criteria(request, principal)
    plan: SqlitePlan | None = None
    if session.get_bind().dialect.name == "sqlite" and (c.terms or c.tags):
        page = int(_get(request, "page_size", 0) or 0) or DEFAULT_PAGE_SIZE
        plan = await sqlite_plan(session, c.terms, c.tags, narrowed=c.strong, other_density=c.density, page=page)
    where = c.clauses(plan)
    for provider in _filter_providers:
        where += await provider(session, request)
    return where


async def contact_query(session: AsyncSession, request: Any, principal: Principal | None) -> Select[Any]:
    """Every contact `principal` may see that matches `request`'s filters, in its order (no paging)."""
    keys = await _sort_keys(session, request)
    stmt = select(Contact).where(*await _where(session, request, principal))
    return stmt.order_by(*order_clauses(keys, Contact.id))


def request_filters(request: Any) -> dict[str, Any]:
    """What a page token is bound to: every field of the request but the paging ones."""
    if isinstance(request, Message):
        data = to_dict(request)
    else:
        data = {k: v for k, v in vars(request).items() if not k.startswith("_")}
    return {k: v for k, v in data.items() if k not in PAGING_FIELDS}


async def list_contacts(session: AsyncSession, request: Any, principal: Principal | None) -> tuple[list[Contact], str]:
    """One page of `contact_query`, with stable keyset pagination (the token carries the last sort key
    and id, and is bound to the filters and order)."""
    keys = await _sort_keys(session, request)
    where = await _where(session, request, principal)
    paging: dict[str, Any] = {
        "page_size": int(_get(request, "page_size", 0) or 0),
        "page_token": str(_get(request, "page_token")),
        "filters": request_filters(request),
    }
    for pager in _pagers:
        page = await pager(session, keys, where, **paging)
        if page is not None:
            return page
    return await keyset_page(session, select(Contact).where(*where), keys, Contact.id, **paging)


__all__ = [
    "DEFAULT_ORDER",
    "SORT_FIELDS",
    "Criteria",
    "contact_filters",
    "contact_query",
    "criteria",
    "list_contacts",
    "parse_time",
    "register_filter",
    "register_pager",
    "register_sort",
]
