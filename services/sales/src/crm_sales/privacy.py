"""What sales holds about a person (crm_kit.privacy): the contact's name copied onto opportunities, and the
contact reference. Erasure clears the copied name (the opportunity itself is business data and stays,
linked to the contact's tombstone id) and deletes the reference."""

from __future__ import annotations

from crm_kit.crud import ResourceStore
from crm_kit.privacy import Holding, PersonalData
from crm_sales.models import ContactRef, Opportunity
from crm_sales.servicer import opportunity_message

# Emits the PII-free `updated` event of each anonymised opportunity.
OPPORTUNITIES = ResourceStore(Opportunity, context="sales", entity="opportunity", to_message=opportunity_message)

PERSONAL_DATA = PersonalData(
    "sales",
    [
        Holding(
            Opportunity,
            "opportunities",
            anonymise={"contact_name": ""},
            pii=("contact_name",),
            audit_entity="opportunity",
            store=OPPORTUNITIES,
        ),
        Holding(ContactRef, "contact_ref", single=True, pii=("display_name",)),
    ],
)
