"""Customer contacts as the other services see them, without ever reading the customer database.

A service that references contacts (sales opportunities, servicedesk tickets) keeps a `contact_refs`
projection, maintained from the customer service's `crm.customer.contact.created|updated|deleted` events:

    class ContactRef(Base, ContactRefMixin):  # in the service's models.py
        pass

    CONTACTS = ContactProjection(ContactRef, copies=[NameCopy(Opportunity, "contact_id", "contact_name")])
    CONTACTS.subscription("sales-contacts")          # from ServiceSpec.subscriptions
    ContactVerifier(rt.db, CONTACTS, customer_address("sales"))  # used by the servicer on writes

and creates the table in a migration with `create_contact_refs_table(op)`, beside
`crm_kit.privacy.create_privacy_tables(op)`: events about an erased contact are ignored.

On a write, `ContactVerifier` accepts a contact the projection knows, rejects one it knows was deleted, and
otherwise asks the customer service (`GetContact`, with the caller's own token): NOT_FOUND becomes an
INVALID_ARGUMENT naming `contact_id`; an unreachable customer service is accepted, since the projection
catches up (and fills in the name) when the customer service's events arrive. A caller who sees only the
contacts they own (`crm_kit.access`) is always checked with the customer service, so nobody can link a
record to a contact they cannot see.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import grpc
from sqlalchemy import Boolean, Integer, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm.customer.v1 import customer_pb2, customer_pb2_grpc
from crm_kit.access import restricted
from crm_kit.context import current_principal
from crm_kit.crud import ResourceStore
from crm_kit.db.base import TenantScoped, UtcDateTime, utcnow
from crm_kit.db.engine import Database
from crm_kit.errors import FailedPrecondition, InvalidArgument
from crm_kit.events.envelope import Event, MalformedEvent, parse_type, subject_filter
from crm_kit.grpc.channels import open_aio_channel
from crm_kit.privacy import is_erased
from crm_kit.runtime import Subscription
from crm_kit.settings import env_prefix
from crm_kit.telemetry import inject_headers

log = logging.getLogger(__name__)

DEFAULT_CUSTOMER_ADDR = "127.0.0.1:50051"
CONTACT_EVENTS = subject_filter("customer", "contact")  # crm.events.*.customer.contact.>
TABLE = "contact_refs"
MERGED, UNMERGED = "merged", "unmerged"  # crm.customer.contact.merged|unmerged: repoint (ContactLink)
FIELD = "contact_id"
# Codes meaning "the customer service cannot answer now": the contact is accepted and checked later by
# the projection. Everything else that is not an answer fails the write.
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def name_of(contact: dict[str, Any]) -> str:
    """A contact's name as people read it, from a contact in an event: the customer service's own
    `display_name` (张伟, Ada Lovelace), or for an event without one, first and last name."""
    given = str(contact.get("display_name") or "").strip()
    if given:
        return given[:255]
    return display_name(str(contact.get("first_name", "")), str(contact.get("last_name", "")))[:255]


def display_name(first_name: str, last_name: str) -> str:
    """First and last name joined: the fallback of `name_of` (the customer service puts CJK names family
    name first, without a space, and says so in every event's `display_name`)."""
    return " ".join(p for p in (first_name.strip(), last_name.strip()) if p)


def customer_address(service: str) -> str:
    """`<SERVICE>_CUSTOMER_ADDR` (e.g. SALES_CUSTOMER_ADDR), default 127.0.0.1:50051."""
    return os.environ.get(f"{env_prefix(service)}CUSTOMER_ADDR", "").strip() or DEFAULT_CUSTOMER_ADDR


class ContactRefMixin(TenantScoped):
    """What a service knows about one contact of a tenant. Deleted contacts stay as tombstones, so a late
    `updated` event cannot bring them back and writes referring to them are refused without a call."""

    __tablename__ = TABLE

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    contact_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    contact_version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)


def create_contact_refs_table(op: Any) -> None:
    """Create `contact_refs` with row-level security, as of kit contacts schema 1 (call from a migration).
    Written out, not taken from the mixin, so that old revisions never change meaning."""
    import sqlalchemy as sa

    from crm_kit.db.migrations import enable_tenant_rls

    op.create_table(
        TABLE,
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("contact_id", sa.String(36), primary_key=True),
        sa.Column("display_name", sa.String(255), nullable=False),
        sa.Column("contact_version", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )
    enable_tenant_rls(op, TABLE)


@dataclass(frozen=True)
class NameCopy:
    """A column holding a copy of the contact's display name (e.g. opportunities.contact_name), kept up to
    date when the contact is renamed. The copy is derived data: the row's version is not bumped."""

    model: type[Any]
    id_attr: str = "contact_id"
    name_attr: str = "contact_name"


@dataclass(frozen=True)
class ContactLink:
    """A column referring to a contact without a copy of its name (e.g. tickets.contact_id). Links and name
    copies are repointed on merges: `crm.customer.contact.merged` moves the duplicate's rows to the
    survivor; `crm.customer.contact.unmerged` moves back the rows it names in `references` (the records the
    duplicate's timeline knew) that still point at the survivor. Derived data: versions are not bumped and
    no events are emitted."""

    model: type[Any]
    id_attr: str = "contact_id"


class ContactProjection:
    """Maintains the `contact_refs` projection from customer contact events."""

    def __init__(
        self,
        model: type[ContactRefMixin],
        *,
        copies: Sequence[NameCopy] = (),
        links: Sequence[ContactLink] = (),
    ) -> None:
        self.model = model
        self.copies = list(copies)
        self.links = list(links)

    def subscription(self, name: str) -> Subscription:
        """The durable consumer for `ServiceSpec.subscriptions`; `name` must be unique per service."""
        return Subscription(name=name, subjects=[CONTACT_EVENTS], handler=self.handle)

    async def lookup(self, session: AsyncSession, contact_id: str) -> ContactRefMixin | None:
        stmt = select(self.model).where(self.model.contact_id == contact_id)
        return (await session.execute(stmt)).scalar_one_or_none()

    async def handle(self, session: AsyncSession, event: Event) -> None:
        """Apply one contact event (runs inside the event's tenant scope and the consumer's transaction).
        Events older than what is stored (by contact version) are ignored, so redeliveries and reordering
        are harmless."""
        _, entity, action = parse_type(event.type)
        if entity == "contact" and action in (MERGED, UNMERGED):
            await self.repoint(session, event, action)
            return
        if entity != "contact" or action not in ("created", "updated", "deleted"):
            return
        contact = event.data.get("contact")
        if not isinstance(contact, dict):
            raise MalformedEvent(f"{event.type} {event.id} has no 'contact' object in its data")
        contact_id = str(contact.get("id") or event.subject)
        if not contact_id:
            raise MalformedEvent(f"{event.type} {event.id} names no contact")
        if await is_erased(session, contact_id):  # a replay must not bring an erased person back
            log.debug("contact %s was erased: ignoring %s", contact_id, event.type)
            return
        version = int(contact.get("version") or 0)
        name = name_of(contact)
        deleted = action == "deleted"

        stmt = select(self.model).where(self.model.contact_id == contact_id).with_for_update()
        ref = (await session.execute(stmt)).scalar_one_or_none()
        if ref is None:
            session.add(
                cast(Any, self.model)(
                    contact_id=contact_id,
                    display_name=name,
                    contact_version=version,
                    deleted=deleted,
                    update_time=event.time,
                )
            )
            renamed = bool(name)
        else:
            newer = version > ref.contact_version or (version == ref.contact_version and deleted and not ref.deleted)
            if not newer:
                log.debug(
                    "contact %s: ignoring %s of version %s (have %s)", contact_id, action, version, ref.contact_version
                )
                return
            renamed = name != ref.display_name
            ref.display_name = name
            ref.contact_version = version
            ref.deleted = deleted
            ref.update_time = event.time
        await session.flush()
        if renamed:
            for copy in self.copies:
                id_col = getattr(copy.model, copy.id_attr)
                name_col = getattr(copy.model, copy.name_attr)
                # ORM-enabled UPDATE: the tenant guard adds tenant_id = <the event's tenant>.
                await session.execute(
                    update(copy.model)
                    .where(id_col == contact_id, name_col != name)
                    .values({copy.name_attr: name})
                    .execution_options(synchronize_session=False)
                )

    async def repoint(self, session: AsyncSession, event: Event, action: str) -> None:
        """Move the records of a merged duplicate to the survivor (merged), or those named in the event's
        `references` back to the duplicate (unmerged)."""
        survivor_id = str(event.data.get("survivor_id") or "")
        duplicate_id = str(event.data.get("duplicate_id") or "")
        if not survivor_id or not duplicate_id:
            raise MalformedEvent(f"{event.type} {event.id} needs survivor_id and duplicate_id")
        merged = action == MERGED
        from_id, to_id = (duplicate_id, survivor_id) if merged else (survivor_id, duplicate_id)
        if await is_erased(session, to_id):
            return
        only: list[str] | None = None
        if not merged:
            refs = event.data.get("references") or []
            only = sorted({str(r.get("id")) for r in refs if isinstance(r, dict) and r.get("id")})
            if not only:
                return
        person = event.data.get("survivor" if merged else "duplicate")
        if isinstance(person, dict):
            name = name_of(person)
        else:
            ref = await self.lookup(session, to_id)
            name = ref.display_name if ref is not None else ""
        targets: list[tuple[Any, str, dict[str, str]]] = [
            (c.model, c.id_attr, {c.id_attr: to_id, c.name_attr: name}) for c in self.copies
        ]
        targets += [(link.model, link.id_attr, {link.id_attr: to_id}) for link in self.links]
        for model, id_attr, values in targets:
            chunks: list[list[str] | None] = (
                [None] if only is None else [only[i : i + 500] for i in range(0, len(only), 500)]
            )
            for chunk in chunks:
                stmt = update(model).where(getattr(model, id_attr) == from_id)
                if chunk is not None:
                    stmt = stmt.where(model.id.in_(chunk))
                # ORM-enabled UPDATE: the tenant guard adds tenant_id = <the event's tenant>.
                await session.execute(stmt.values(values).execution_options(synchronize_session=False))


class ContactVerifier:
    """Checks `contact_id` on writes: projection first, then the customer service over one long-lived
    gRPC channel, with the caller's token (the customer service authorises the caller itself)."""

    def __init__(self, db: Database, projection: ContactProjection, address: str, *, timeout: float = 3.0) -> None:
        self.db = db
        self.projection = projection
        self.address = address
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: customer_pb2_grpc.CustomerServiceStub | None = None

    def stub(self) -> customer_pb2_grpc.CustomerServiceStub:
        """Opened on first use, on the running event loop, and kept for the life of the process."""
        if self._stub is None:
            self._channel = open_aio_channel(self.address)
            self._stub = customer_pb2_grpc.CustomerServiceStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    async def verify(self, contact_id: str) -> str:
        """The contact's display name ("" for no contact, or a contact not known yet); raises
        INVALID_ARGUMENT on `contact_id` when the contact does not exist."""
        if not contact_id:
            return ""
        async with self.db.transaction() as session:
            ref = await self.projection.lookup(session, contact_id)
        return await self._check(contact_id, ref)

    async def verify_change(self, store: ResourceStore[Any], resource_id: str, contact_id: str) -> str | None:
        """For an update: like `verify`, but None (and no check) when the resource already refers to this
        contact, so editing other fields never fails because the contact was deleted meanwhile."""
        async with self.db.transaction() as session:
            current = await store.get(session, resource_id)
            if current.contact_id == contact_id:
                return None
            ref = await self.projection.lookup(session, contact_id) if contact_id else None
        return await self._check(contact_id, ref) if contact_id else ""

    async def _check(self, contact_id: str, ref: ContactRefMixin | None) -> str:
        if ref is not None and ref.deleted:
            raise InvalidArgument.field(FIELD, f"contact {contact_id!r} does not exist")
        if ref is not None and not restricted(current_principal()):
            return ref.display_name
        # Unknown here, or a caller who sees only the contacts they own (crm_kit.access): the customer
        # service decides, with the caller's token, so nobody links a record to a contact they cannot see.
        name = await self._ask_customer(contact_id)
        return name or (ref.display_name if ref is not None else "")

    async def _ask_customer(self, contact_id: str) -> str:
        principal = current_principal()
        metadata: list[tuple[str, str]] = list(inject_headers({}).items())
        if principal is not None and principal.token:
            metadata.append(("authorization", f"Bearer {principal.token}"))
        try:
            contact = await self.stub().GetContact(
                customer_pb2.GetContactRequest(id=contact_id), metadata=metadata, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise InvalidArgument.field(FIELD, f"contact {contact_id!r} does not exist") from None
            if code in UNREACHABLE:
                log.warning(
                    "customer service at %s unreachable (%s); accepting contact %s unverified",
                    self.address,
                    code.name,
                    contact_id,
                )
                return ""
            log.error("customer service answered %s verifying contact %s: %s", code.name, contact_id, exc.details())
            raise FailedPrecondition(f"cannot verify contact_id: the customer service answered {code.name}") from None
        return contact.display_name or display_name(contact.first_name, contact.last_name)
