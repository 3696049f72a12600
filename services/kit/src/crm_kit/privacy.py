"""Personal data: what a service holds about a person (a customer contact), its export and its erasure.

Each service declares, in one `PersonalData` registry given as `ServiceSpec.personal_data`, which of its
tables hold a contact's data and what erasure does to them:

    PERSONAL_DATA = PersonalData("sales", [
        Holding(Opportunity, "opportunities", anonymise={"contact_name": ""}, audit_entity="opportunity",
                store=OPPORTUNITIES),
        Holding(ContactRef, "contact_ref", single=True, pii=("display_name",)),   # erase: delete
    ])

and creates the `erased_contacts` table in a migration with `create_privacy_tables(op)`. The kit runtime
then, for every such service:

- serves crm.common.v1.PersonalDataService: ExportPersonalData returns every declared row as stored, and
  the audit entries about those rows (admins and managers only);
- runs the durable consumer `<service>-privacy` on `crm.customer.contact.erased`. In one transaction it
  deletes or anonymises the declared rows, blanks their personal values in the audit log, deletes or
  redacts the service's outbox and dead-letter rows carrying the person's data (`crm_kit.privacy_scrub`),
  records the contact in `erased_contacts`, and emits an `updated` event for every anonymised resource
  that has a store, so read models converge on the PII-free state; then it deletes the service's own
  earlier events about the contact from the JetStream stream.

Projections consult `is_erased`, so a replayed `created`/`updated` event never brings the person back.
`undeclared_tables` lists the tables of a service that the registry says nothing about; each service's
tests assert it is empty, so a new table holding personal data cannot be forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy import JSON, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.schema import Column, MetaData

from crm.common.v1 import personal_data_pb2, personal_data_pb2_grpc
from crm_kit import audit, validation
from crm_kit.context import current_principal
from crm_kit.crud import ResourceStore
from crm_kit.db.base import NAMING, TenantScoped, UtcDateTime, utcnow
from crm_kit.db.engine import Database
from crm_kit.errors import NotFound, PermissionDenied, Violations
from crm_kit.events.bus import EventBus
from crm_kit.events.envelope import Event, MalformedEvent, subject_filter
from crm_kit.grpc.server import Servicer
from crm_kit.privacy_scrub import (
    ScrubResult,
    identifying_terms,
    needles,
    purge_stream,
    redact_text,
    scrub_event_copies,
)

log = logging.getLogger(__name__)

ERASED_TYPE = "crm.customer.contact.erased"
ERASED_EVENTS = subject_filter("customer", "contact", "erased")  # crm.events.*.customer.contact.erased
TABLE = "erased_contacts"
DELETE = "delete"
ANONYMISE = "anonymise"
ERASE_ACTION = "erase"  # the audit action of an erasure
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALWAYS_KEPT = frozenset({"tenant_id"})


# --- erased contacts ----------------------------------------------------------------------------------


class PrivacyBase(DeclarativeBase):
    """The kit's privacy tables: tenant data, in every service database that holds personal data."""

    metadata = MetaData(naming_convention=NAMING)


class ErasedContact(PrivacyBase, TenantScoped):
    """A contact erased in this tenant: the tombstone every projection consults."""

    __tablename__ = TABLE

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    contact_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


def create_privacy_tables(op: Any) -> None:
    """Create `erased_contacts` with row-level security, as of kit privacy schema 1 (call from a
    migration). Written out, not taken from the model, so that old revisions never change meaning."""
    from crm_kit.db.migrations import enable_tenant_rls

    op.create_table(
        TABLE,
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("contact_id", sa.String(64), primary_key=True),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
    )
    enable_tenant_rls(op, TABLE)


async def erased_at(session: AsyncSession, contact_id: str) -> datetime | None:
    """When the contact was erased in the tenant in context, or None."""
    stmt = select(ErasedContact.erased_at).where(ErasedContact.contact_id == contact_id)
    value: datetime | None = (await session.execute(stmt)).scalar_one_or_none()
    return value


async def is_erased(session: AsyncSession, contact_id: str) -> bool:
    return bool(contact_id) and await erased_at(session, contact_id) is not None


async def record_erased(session: AsyncSession, contact_id: str, when: datetime | None = None) -> datetime:
    """Record the erasure (idempotent: the first time wins); returns the erasure time."""
    existing = await erased_at(session, contact_id)
    if existing is not None:
        return existing
    when = when or utcnow()
    session.add(ErasedContact(contact_id=contact_id, erased_at=when))
    await session.flush()
    return when


# --- the registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holding:
    """Rows of one table holding a contact's data, found by `link` (the column naming the contact).

    Erasure deletes the rows, unless `anonymise` or `keep` is given: then it writes the `anonymise` values
    and, with `keep`, blanks every other column not named in `keep` (privacy by default: a column added
    later is blanked unless someone decides to keep it). Anonymised rows get their `version` bumped; with
    a `store`, an `updated` event is emitted through it.

    `pii` names the columns holding the person's identifying values (emails, phones, names): erasure looks
    for those values in the kit's outbox and dead letters. `audit_entity` blanks the values of the audit
    entries about each row (only `audit_fields`, by default the anonymised columns; every field when the
    rows are deleted)."""

    model: type[Any]
    key: str
    link: str = "contact_id"
    anonymise: Mapping[str, Any] = field(default_factory=dict)
    keep: tuple[str, ...] | None = None
    pii: tuple[str, ...] = ()
    audit_entity: str = ""
    audit_fields: tuple[str, ...] | None = None
    store: ResourceStore[Any] | None = None
    single: bool = False  # exported as one object (or null) rather than a list
    required: bool = False  # the contact is unknown here (NOT_FOUND) without a row

    @property
    def erase(self) -> str:
        return ANONYMISE if self.anonymise or self.keep is not None else DELETE

    @property
    def table(self) -> str:
        return str(self.model.__table__.name)

    def columns(self) -> list[Column[Any]]:
        return list(self.model.__table__.columns)

    def blanked(self) -> list[Column[Any]]:
        """The columns erasure overwrites."""
        if self.erase == DELETE:
            return []
        fixed = set(self.anonymise)
        if self.keep is None:
            return [c for c in self.columns() if c.key in fixed]
        kept = set(self.keep) | _ALWAYS_KEPT | {self.link}
        return [c for c in self.columns() if c.key in fixed or (c.key not in kept and not c.primary_key)]


@dataclass(frozen=True)
class Custom:
    """A feature that exports and erases its own data (e.g. the customer timeline): `export` returns
    rows or JSON values, `erase` removes them (audit entries included). `tables` names the tables it
    covers, for `undeclared_tables`."""

    key: str
    export: Callable[[AsyncSession, str], Awaitable[Any]]
    erase: Callable[[AsyncSession, str], Awaitable[Any]]
    tables: tuple[str, ...] = ()
    terms: Callable[[AsyncSession, str], Awaitable[Iterable[Any]]] | None = None


@dataclass(frozen=True)
class Mentions:
    """Free text that may quote a person without naming them by id (other people's tickets and notes, an
    import's problem report): rows whose `columns` contain one of the person's identifying values (emails,
    phone numbers, full names, from the holdings' `pii` columns) are exported, and erasure replaces those
    values with "[erased]" (with a `store`, each changed row also gets an `updated` event). Rows a holding
    already covers, or (with `link`) rows of the person themselves, are left to the holding."""

    model: type[Any]
    key: str
    columns: tuple[str, ...]
    store: ResourceStore[Any] | None = None
    link: str = ""

    @property
    def table(self) -> str:
        return str(self.model.__table__.name)


Declaration = Holding | Custom | Mentions


@dataclass
class Erasure:
    """What an erasure did (counts only: never the data)."""

    contact_id: str
    erased_at: datetime
    rows: dict[str, int] = field(default_factory=dict)
    scrubbed: ScrubResult = field(default_factory=ScrubResult)
    stream_deleted: int = 0
    # The person's identifying values, kept in memory only (for the stream purge): never log or store them.
    terms: set[str] = field(default_factory=set, repr=False)


class PersonalData:
    def __init__(
        self,
        service: str,
        declarations: Sequence[Declaration] = (),
        *,
        without_personal_data: Mapping[str, str] | None = None,
        audit_log: bool = True,
    ) -> None:
        """`without_personal_data`: {table: why} for the service's tables holding nothing about a person
        (or only what declared rows already cover, e.g. an index kept in step by mapper events).
        `audit_log`: the service keeps an audit log (`crm_kit.audit`); erasure then also blanks the fields
        of any audit entry quoting the person's identifying values (about other records, too)."""
        keys = [d.key for d in declarations]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{service}: duplicate personal data keys {keys}")
        for d in declarations:
            if isinstance(d, Custom):
                continue
            if isinstance(d, Holding):
                wanted = {d.link, *d.anonymise, *d.pii, *(d.keep or ())}
            else:
                wanted = {*d.columns, *([d.link] if d.link else [])}
            missing = wanted - {c.key for c in d.model.__table__.columns}
            if missing:
                raise ValueError(f"{service}: {d.table} has no columns {sorted(missing)}")
        self.service = service
        self.declarations = list(declarations)
        self.without_personal_data = dict(without_personal_data or {})
        self.audit_log = audit_log

    # -- declarations ----------------------------------------------------------------------------------

    def declared_tables(self) -> set[str]:
        tables = {TABLE, *self.without_personal_data}
        for d in self.declarations:
            tables.update(d.tables if isinstance(d, Custom) else [d.table])
        return tables

    # -- export ----------------------------------------------------------------------------------------

    async def export(self, session: AsyncSession, contact_id: str) -> tuple[dict[str, Any], datetime | None]:
        """Everything declared about the contact, and when it was erased (None if not). Raises NOT_FOUND
        when a `required` holding has no row and the contact was never erased here."""
        when = await erased_at(session, contact_id)
        document: dict[str, Any] = {}
        audited: dict[str, list[str]] = {}
        terms: list[Any] = []
        held: set[Any] = set()
        for d in self.declarations:
            if isinstance(d, Custom):
                document[d.key] = _jsonable_rows(await d.export(session, contact_id))
                continue
            if isinstance(d, Mentions):
                continue
            rows = await self._rows(session, d, contact_id)
            if d.required and not rows and when is None:
                raise NotFound("contact", contact_id)
            terms.extend(_terms(d, rows))
            held.update(_identity(r) for r in rows)
            docs = [row_document(r) for r in rows]
            document[d.key] = (docs[0] if docs else None) if d.single else docs
            if d.audit_entity:
                audited.setdefault(d.audit_entity, []).extend(_ids(d, rows, contact_id))
        strong = identifying_terms(terms)
        for m in self.declarations:
            if isinstance(m, Mentions):
                found = await _mentioning(session, m, strong, contact_id)
                rows = [r for r in found if _identity(r) not in held]
                document[m.key] = [row_document(r) for r in rows]
        if audited:
            document["audit_log"] = await _audit_entries(session, audited)
        return document, when

    # -- erasure ---------------------------------------------------------------------------------------

    async def erase(self, session: AsyncSession, contact_id: str, *, when: datetime | None = None) -> Erasure:
        """Erase the contact's data held here, in the caller's transaction (see the module docstring).
        Idempotent: a second run only anonymises rows written since (it leaves the outbox alone: every
        event recorded after the first run was written without the person's data)."""
        terms: list[Any] = []
        first = await erased_at(session, contact_id)
        report = Erasure(contact_id=contact_id, erased_at=first or when or utcnow())
        anonymised: list[tuple[Holding | Mentions, Any, list[str]]] = []
        for d in self.declarations:
            if isinstance(d, Mentions):
                continue
            if isinstance(d, Custom):
                if d.terms is not None:
                    terms.extend(await d.terms(session, contact_id))
                result = await d.erase(session, contact_id)
                report.rows[d.key] = len(result) if isinstance(result, list | tuple | set) else int(bool(result))
                continue
            rows = await self._rows(session, d, contact_id, for_update=True)
            terms.extend(_terms(d, rows))
            for row in rows:
                if d.audit_entity:
                    fields = d.audit_fields
                    if fields is None and d.erase == ANONYMISE:
                        fields = tuple(c.key for c in d.blanked())
                    await audit.redact_audit(session, entity=d.audit_entity, entity_id=_id(row), fields=fields)
                if d.erase == DELETE:
                    await session.delete(row)
                else:
                    changed = _anonymise(d, row)
                    if changed:
                        anonymised.append((d, row, changed))
            report.rows[d.key] = len(rows)
            await session.flush()
        strong = identifying_terms(terms)
        report.terms = strong
        for m in self.declarations:
            if isinstance(m, Mentions):
                redacted = await _redact_mentions(session, m, strong, contact_id)
                report.rows[m.key] = len(redacted)
                anonymised.extend((m, row, changed) for row, changed in redacted)
        if self.audit_log:
            report.rows["audit_quotes"] = await _redact_audit_quotes(session, strong)
        if first is None:
            report.scrubbed = await scrub_event_copies(session, contact_id, terms)
        for d, row, changed in anonymised:  # after the scrub, which would delete these new outbox rows
            if isinstance(d, Holding) and d.audit_entity:
                await audit.record_audit(
                    session,
                    action=ERASE_ACTION,
                    entity=d.audit_entity,
                    entity_id=_id(row),
                    after={name: getattr(row, name) for name in changed},
                )
            if d.store is not None:
                await d.store.emit(session, row, "updated", changed=changed, reason="erasure")
        report.erased_at = await record_erased(session, contact_id, report.erased_at)
        return report

    async def handle_erased(
        self, session: AsyncSession, event: Event, *, bus: EventBus | None = None, stream: str = ""
    ) -> Erasure:
        """The `<service>-privacy` consumer's handler for `crm.customer.contact.erased`."""
        contact_id = event.data.get("contact_id") or event.subject
        if not isinstance(contact_id, str) or not contact_id or len(contact_id) > 64:
            raise MalformedEvent(f"{event.type} {event.id} names no contact_id")
        if await is_erased(session, contact_id):
            report = Erasure(contact_id=contact_id, erased_at=await erased_at(session, contact_id) or event.time)
        else:
            report = await self.erase(session, contact_id, when=event.time)
        if bus is not None and stream:
            # Inside the transaction: if it fails the event is retried, and deleting is idempotent.
            report.stream_deleted = await purge_stream(
                bus.js,
                stream,
                tenant_id=event.tenant_id,
                context=self.service,
                contact_id=contact_id,
                terms=report.terms,
            )
        log.info(
            "%s: erased contact %s (rows %s, outbox -%d/~%d, dead letters -%d/~%d, stream -%d)",
            self.service,
            contact_id,
            report.rows,
            report.scrubbed.outbox_deleted,
            report.scrubbed.outbox_redacted,
            report.scrubbed.dead_letters_deleted,
            report.scrubbed.dead_letters_redacted,
            report.stream_deleted,
        )
        return report

    def erasure_handler(self, bus: EventBus | None, stream: str) -> Callable[[AsyncSession, Event], Awaitable[None]]:
        async def handle(session: AsyncSession, event: Event) -> None:
            if event.type == ERASED_TYPE:
                await self.handle_erased(session, event, bus=bus, stream=stream)

        return handle

    def servicer(self, db: Database) -> Servicer:
        return Servicer(
            personal_data_pb2_grpc.add_PersonalDataServiceServicer_to_server,
            PersonalDataServicer(db, self),
            personal_data_pb2.DESCRIPTOR.services_by_name["PersonalDataService"].full_name,
        )

    # -- helpers ---------------------------------------------------------------------------------------

    async def _rows(
        self, session: AsyncSession, holding: Holding, contact_id: str, *, for_update: bool = False
    ) -> list[Any]:
        model = holding.model
        stmt = select(model).where(getattr(model, holding.link) == contact_id)
        stmt = stmt.order_by(*model.__table__.primary_key.columns)
        if for_update:
            stmt = stmt.with_for_update()
        return list((await session.execute(stmt)).scalars())


def undeclared_tables(metadata: MetaData, personal_data: PersonalData) -> list[str]:
    """Tables of a service's metadata the registry says nothing about (neither held nor explicitly free of
    personal data)."""
    return sorted(set(metadata.tables) - personal_data.declared_tables())


# --- rows as JSON -------------------------------------------------------------------------------------


def row_document(row: Any) -> dict[str, Any]:
    """Every stored column of a row except the tenant, as JSON values."""
    return {c.key: audit.jsonable(getattr(row, c.key)) for c in row.__table__.columns if c.key != "tenant_id"}


def _jsonable_rows(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_jsonable_rows(v) for v in value]
    if hasattr(value, "__table__"):
        return row_document(value)
    return audit.jsonable(value)


def _id(row: Any) -> str:
    return str(getattr(row, "id", "") or "")


def _ids(holding: Holding, rows: Sequence[Any], contact_id: str) -> list[str]:
    """The ids the audit log knows the rows by; the contact's own entries outlive its (deleted) row."""
    if holding.link == "id" or not hasattr(holding.model, "id"):
        return [contact_id]
    return [_id(r) for r in rows]


def _terms(holding: Holding, rows: Sequence[Any]) -> list[Any]:
    """The identifying values a holding's rows carry (see `identifying_terms` for what is kept)."""
    found: list[Any] = []
    for row in rows:
        found.extend(getattr(row, name) for name in holding.pii)
        found.extend(_full_names(row, holding.pii))
    return found


def _identity(row: Any) -> tuple[Any, ...]:
    return (type(row).__table__.name, *(getattr(row, c.key) for c in type(row).__table__.primary_key.columns))


async def _mentioning(
    session: AsyncSession, mentions: Mentions, terms: set[str], contact_id: str, *, for_update: bool = False
) -> list[Any]:
    if not terms:
        return []
    model = mentions.model
    columns = [sa.cast(getattr(model, c), sa.Text) for c in mentions.columns]
    wanted = sorted({n for t in terms for n in needles(t)})
    stmt = select(model).where(sa.or_(*(col.contains(n, autoescape=True) for col in columns for n in wanted)))
    if mentions.link:
        stmt = stmt.where(getattr(model, mentions.link) != contact_id)
    if for_update:
        stmt = stmt.with_for_update()
    return list((await session.execute(stmt)).scalars())


async def _redact_mentions(
    session: AsyncSession, mentions: Mentions, terms: set[str], contact_id: str
) -> list[tuple[Any, list[str]]]:
    """Replace the person's values in the rows quoting them; returns each changed row and its columns."""
    changed: list[tuple[Any, list[str]]] = []
    for row in await _mentioning(session, mentions, terms, contact_id, for_update=True):
        touched: list[str] = []
        for name in mentions.columns:
            value = getattr(row, name)
            new = _redact_value(value, terms)
            if new != value:
                setattr(row, name, new)
                touched.append(name)
        if touched:
            changed.append((row, touched))
            if hasattr(row, "version") and isinstance(row.version, int):
                row.version += 1
            if hasattr(row, "update_time"):
                row.update_time = utcnow()
    await session.flush()
    return changed


async def _redact_audit_quotes(session: AsyncSession, terms: set[str]) -> int:
    """Blank, in every audit entry quoting one of the terms, the fields that quote it (and the same fields of
    the other entries about that record: `audit.redact_audit` works per record). Returns the records."""
    if not terms:
        return 0
    wanted = sorted({n for t in terms for n in needles(t)})
    documents = [sa.cast(audit.AuditEntry.before, sa.Text), sa.cast(audit.AuditEntry.after, sa.Text)]
    stmt = select(audit.AuditEntry).where(
        sa.or_(*(doc.contains(n, autoescape=True) for doc in documents for n in wanted))
    )
    fields: dict[tuple[str, str], set[str]] = {}
    for entry in (await session.execute(stmt)).scalars():
        for document in (entry.before, entry.after):
            for name, value in (document or {}).items():
                if _redact_value(value, terms) != value:
                    fields.setdefault((entry.entity, entry.entity_id), set()).add(name)
    for (entity, entity_id), names in fields.items():
        await audit.redact_audit(session, entity=entity, entity_id=entity_id, fields=sorted(names))
    return len(fields)


def _redact_value(value: Any, terms: set[str]) -> Any:
    if isinstance(value, str):
        return redact_text(value, terms)
    if isinstance(value, list):
        return [_redact_value(v, terms) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v, terms) for k, v in value.items()}
    return value


def _full_names(row: Any, pii: Sequence[str]) -> list[str]:
    """A person's full name as other records may carry it, when first and last names are held apart."""
    if "first_name" not in pii or "last_name" not in pii:
        return []
    first, last = (str(getattr(row, n) or "").strip() for n in ("first_name", "last_name"))
    if not (first and last):
        return []
    return [f"{first} {last}", f"{last} {first}", f"{last}{first}"]


async def _audit_entries(session: AsyncSession, wanted: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for entity, ids in wanted.items():
        unique = sorted(set(ids))
        for start in range(0, len(unique), 500):
            stmt = (
                select(audit.AuditEntry)
                .where(audit.AuditEntry.entity == entity, audit.AuditEntry.entity_id.in_(unique[start : start + 500]))
                .order_by(audit.AuditEntry.id)
            )
            entries.extend(row_document(e) for e in (await session.execute(stmt)).scalars())
    return sorted(entries, key=lambda e: str(e["id"]))


def _anonymise(holding: Holding, row: Any) -> list[str]:
    """Overwrite the row's personal columns; returns the names of those that changed."""
    changed: list[str] = []
    for column in holding.blanked():
        current = getattr(row, column.key)
        value = holding.anonymise[column.key] if column.key in holding.anonymise else blank(column, current)
        if current != value:
            setattr(row, column.key, value)
            changed.append(column.key)
    if changed:
        if hasattr(row, "version") and isinstance(row.version, int):
            row.version += 1
        if hasattr(row, "update_time"):
            row.update_time = utcnow()
    return changed


def blank(column: Column[Any], current: Any) -> Any:
    """The empty value of a column: None where allowed, else the type's zero ("", 0, false, [] or {})."""
    if column.nullable and not column.primary_key:
        return None
    if isinstance(column.type, JSON):
        return [] if isinstance(current, list) else {}
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return ""
    if python_type is datetime:
        return _EPOCH
    if python_type is date:
        return _EPOCH.date()
    if python_type in (list, dict):
        return python_type()
    if python_type is bool:
        return False
    if python_type in (int, float):
        return python_type(0)
    return ""


# --- the gRPC service ---------------------------------------------------------------------------------


class PersonalDataServicer(personal_data_pb2_grpc.PersonalDataServiceServicer):
    def __init__(self, db: Database, personal_data: PersonalData) -> None:
        self.db = db
        self.personal_data = personal_data

    async def ExportPersonalData(
        self, request: personal_data_pb2.ExportPersonalDataRequest, context: grpc.aio.ServicerContext
    ) -> personal_data_pb2.ExportPersonalDataResponse:
        principal = current_principal()
        if principal is not None and not principal.sees_everything:
            raise PermissionDenied("exporting a person's data needs the admin or manager role")
        v = Violations()
        contact_id = validation.reference(v, "contact_id", request.contact_id, required=True)
        v.raise_if_any()
        async with self.db.transaction() as session:
            document, when = await self.personal_data.export(session, contact_id)
        response = personal_data_pb2.ExportPersonalDataResponse(
            service=self.personal_data.service, contact_id=contact_id, erased=when is not None
        )
        if when is not None:
            document = {"erased_at": audit.jsonable(when), **document}
        response.data.update(document)
        return response
