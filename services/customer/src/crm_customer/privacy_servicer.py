"""crm.customer.v1.PrivacyService: consents and erasure (rules in crm_customer.privacy)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from crm.customer.v1 import privacy_pb2, privacy_pb2_grpc
from crm_customer import privacy
from crm_kit import validation
from crm_kit.context import require_tenant
from crm_kit.db import Database
from crm_kit.errors import Violations
from crm_kit.events.bus import EventBus
from crm_kit.privacy_scrub import purge_stream

log = logging.getLogger(__name__)


def _contact_id(field: str, value: str) -> str:
    v = Violations()
    contact_id = validation.reference(v, field, value, required=True)
    v.raise_if_any()
    return contact_id


class PrivacyServicer(privacy_pb2_grpc.PrivacyServiceServicer):
    def __init__(self, db: Database, bus: EventBus | None = None, stream: str = "") -> None:
        """`bus` and `stream`: where to delete the customer events quoting an erased person (the
        `customer-privacy` consumer deletes those naming the contact's id; only this call still knows the
        person's values)."""
        self.db = db
        self.bus = bus
        self.stream = stream
        self._purges: set[asyncio.Task[None]] = set()

    async def ListConsents(
        self, request: privacy_pb2.ListConsentsRequest, context: grpc.aio.ServicerContext
    ) -> privacy_pb2.ListConsentsResponse:
        contact_id = _contact_id("contact_id", request.contact_id)
        async with self.db.transaction() as session:
            await privacy.visible_contact(session, contact_id)
            rows = await privacy.history(session, contact_id)
        return privacy_pb2.ListConsentsResponse(
            consents=privacy.current(rows, contact_id), history=[privacy.consent_message(r) for r in rows]
        )

    async def SetConsent(
        self, request: privacy_pb2.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> privacy_pb2.Consent:
        change = privacy.consent_change(request)
        async with self.db.transaction() as session:
            row = await privacy.set_consent(session, change)
        return privacy.consent_message(row)

    async def EraseContact(
        self, request: privacy_pb2.EraseContactRequest, context: grpc.aio.ServicerContext
    ) -> privacy_pb2.EraseContactResponse:
        privacy.require_privacy_officer()
        contact_id = _contact_id("id", request.id)
        async with self.db.transaction() as session:
            erased = await privacy.erase_contact(session, contact_id)
        if erased.terms:
            self._purge_quotes(require_tenant(), contact_id, erased.terms)
        response = privacy_pb2.EraseContactResponse(contact_id=contact_id, already_erased=erased.already)
        response.erased_at.FromDatetime(erased.erased_at)
        return response

    def _purge_quotes(self, tenant_id: str, contact_id: str, terms: frozenset[str]) -> None:
        """In the background (the answer does not wait): best effort, the values exist only in memory."""
        if self.bus is None or not self.stream:
            return
        bus, stream = self.bus, self.stream

        async def purge() -> None:
            try:
                deleted = await purge_stream(
                    bus.js, stream, tenant_id=tenant_id, context="customer", contact_id=contact_id, terms=terms
                )
                log.info("erasure of %s: %d customer events quoting the person deleted", contact_id, deleted)
            except Exception as exc:
                log.warning("erasure of %s: purging events quoting the person failed: %s", contact_id, exc)

        task = asyncio.create_task(purge(), name=f"privacy-purge-{contact_id}")
        self._purges.add(task)
        task.add_done_callback(self._purges.discard)
