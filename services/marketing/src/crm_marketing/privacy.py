"""What marketing holds about a person (crm_kit.privacy): nothing yet (campaigns name no contact). The
service still answers ExportPersonalData (with an empty document) and runs the erasure consumer, which
scrubs its outbox, dead letters and stream events. Campaign members and responses must be declared here
when they arrive."""

from __future__ import annotations

from crm_kit.privacy import PersonalData

PERSONAL_DATA = PersonalData("marketing", [], without_personal_data={"campaigns": "campaigns name no contact"})
