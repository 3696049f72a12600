"""What analytics holds about a person (crm_kit.privacy): the contact's view row (its id, version and
whether it was deleted; no personal fields). Erasure deletes it, and the fold ignores the contact's events
from then on (crm_analytics.fold consults `is_erased`), a rebuild included."""

from __future__ import annotations

from crm_analytics.models import ContactView
from crm_kit.privacy import Holding, PersonalData

PERSONAL_DATA = PersonalData(
    "analytics",
    [Holding(ContactView, "contact_view", link="id", single=True)],
    without_personal_data={
        "account_views": "companies, not people",
        "opportunity_views": "stage, status and amount only",
        "ticket_views": "priority and status only",
        "campaign_views": "status only",
        "tenant_stats": "event counts",
    },
    audit_log=False,  # a read model: no audit log of its own
)
