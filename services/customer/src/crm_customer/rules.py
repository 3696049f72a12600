"""Validation and normalisation of contacts and accounts on every write: text trimmed with inner spaces
collapsed, emails lower-cased, phones in E.164 (read in the tenant's default region), names title-cased when
the tenant wants it, enumerations checked; every problem is a violation naming its field."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import crm_kit.validation as validation
from crm.customer.v1 import customer_pb2
from crm_customer import contact_points
from crm_customer.contact_points import email, phone  # noqa: F401  (part of this module's interface)
from crm_customer.names import title_case
from crm_customer.settings import CustomerSettings, defaults
from crm_customer.settings import default_region as _default_region
from crm_kit.errors import Violations

CONTACT_FIELDS = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "account_id",
    "owner_id",
    "tags",
    "gender",
    "birthday",
    "job_title",
    "department",
    "phones",
    "emails",
    "addresses",
    "social_accounts",
    "preferences",
    "interests",
    "source",
    "classification",
    "lifecycle_stage",
    "external_id",
)
ACCOUNT_FIELDS = ("name", "industry", "website", "phone", "owner_id", "classification", "tags", "address")
GENDERS = ("male", "female", "other", "unknown")
CLASSIFICATIONS = ("core", "potential", "general")
LIFECYCLE_STAGES = ("lead", "prospect", "customer", "loyal", "churned")
# A tag never holds a character that separates the tags of an import cell or an export (crm_customer.transfer:
# ; , | and their full-width forms), so tags survive an export and re-import unchanged.
TAG = re.compile(r"^[^,;|\uff1b\uff0c\u3001\"\\]{1,50}$")
WEBSITE = re.compile(r"^(https?://)?[^\s/$.?#][^\s]*\.[^\s]{2,}$", re.IGNORECASE)
NAME_REQUIRED = "a contact needs a first or a last name"


def default_region() -> str:
    return _default_region()


def tags(v: Violations, field: str, values: list[str]) -> list[str]:
    cleaned: list[str] = []
    for i, tag in enumerate(values):
        tag = " ".join(tag.split())
        if not TAG.match(tag):
            v.add(f"{field}[{i}]", "must be 1 to 50 characters without , ; | 、 quotes or backslashes")
        elif tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > 100:
        v.add(field, "at most 100 tags")
    return cleaned


def name(v: Violations, field: str, value: str, settings: CustomerSettings) -> str:
    value = validation.text(v, field, value.replace("\n", " "), max_length=100)
    return title_case(value) if settings.title_case_names else value


def birthday(v: Violations, field: str, value: str) -> str:
    before = len(v.items)
    text = validation.iso_date(v, field, value)
    if text and len(v.items) == before:
        # Not in the future anywhere on Earth (UTC+14 is the first to reach a date).
        latest_today = (datetime.now(UTC) + timedelta(hours=14)).date()
        if date.fromisoformat(text) > latest_today:
            v.add(field, "must not be in the future")
    return text


def _single_line(v: Violations, field: str, value: str, max_length: int) -> str:
    return validation.text(v, field, value.replace("\n", " "), max_length=max_length)


def contact_values(
    msg: customer_pb2.Contact,
    fields: tuple[str, ...] | list[str],
    settings: CustomerSettings | None = None,
    current: Any = None,
) -> dict[str, Any]:
    """The normalised values of `fields` of `msg`; `current` is the stored contact on an update (the lists
    that `email`/`phone` mirror, and the name rule, need it). Raises InvalidArgument naming every field."""
    cfg = settings or defaults()
    region = cfg.default_phone_region
    fields = list(fields)
    v = Violations()
    out: dict[str, Any] = {}
    for field in fields:
        if field in ("first_name", "last_name"):
            out[field] = name(v, field, getattr(msg, field), cfg)
        elif field in ("account_id", "owner_id"):
            out[field] = validation.reference(v, field, getattr(msg, field))
        elif field == "tags":
            out[field] = tags(v, field, list(msg.tags))
        elif field == "gender":
            out[field] = validation.one_of(v, field, msg.gender, GENDERS, default="unknown")
        elif field == "birthday":
            out[field] = birthday(v, field, msg.birthday)
        elif field in ("job_title", "department"):
            out[field] = _single_line(v, field, getattr(msg, field), 100)
        elif field == "source":
            out[field] = _single_line(v, field, msg.source, 50).lower()
        elif field == "classification":
            out[field] = validation.one_of(v, field, msg.classification, CLASSIFICATIONS, default="general")
        elif field == "lifecycle_stage":
            out[field] = validation.one_of(v, field, msg.lifecycle_stage, LIFECYCLE_STAGES, default="lead")
        elif field == "external_id":
            out[field] = _single_line(v, field, msg.external_id, 100)
        elif field == "addresses":
            out[field] = contact_points.addresses(v, msg.addresses)
        elif field == "social_accounts":
            out[field] = contact_points.social_accounts(v, msg.social_accounts)
        elif field == "preferences":
            out[field] = contact_points.preferences(v, msg.preferences)
        elif field == "interests":
            out[field] = contact_points.interests(v, list(msg.interests))
    _mirrored(v, msg, fields, out, region, current)
    if current is None or "first_name" in out or "last_name" in out:
        first = out.get("first_name", getattr(current, "first_name", ""))
        last = out.get("last_name", getattr(current, "last_name", ""))
        if not (first or last):
            v.add("last_name", NAME_REQUIRED)
    v.raise_if_any()
    return out


def _mirrored(
    v: Violations, msg: customer_pb2.Contact, fields: list[str], out: dict[str, Any], region: str, current: Any
) -> None:
    """`phone`/`phones` and `email`/`emails`: the top-level value is the list's primary entry."""
    if "phone" in fields or "phones" in fields:
        before = len(v.items)
        top = contact_points.phone(v, "phone", msg.phone, region) if "phone" in fields else None
        entries = contact_points.phones(v, msg.phones, region) if "phones" in fields else None
        if len(v.items) == before:
            out["phone"], out["phones"] = contact_points.mirror(
                v,
                top_field="phone",
                list_field="phones",
                key="number",
                top=top,
                entries=entries,
                current=list(getattr(current, "phones", None) or []),
                new_entry=lambda n: {"type": contact_points.phone_type_of(n), "number": n},
                explicit_primary=any(p.primary for p in msg.phones),
            )
    if "email" in fields or "emails" in fields:
        before = len(v.items)
        top = contact_points.email(v, "email", msg.email) if "email" in fields else None
        entries = contact_points.emails(v, msg.emails) if "emails" in fields else None
        if len(v.items) == before:
            out["email"], out["emails"] = contact_points.mirror(
                v,
                top_field="email",
                list_field="emails",
                key="address",
                top=top,
                entries=entries,
                current=list(getattr(current, "emails", None) or []),
                new_entry=lambda a: {"type": "other", "address": a},
                explicit_primary=any(e.primary for e in msg.emails),
            )


def account_values(
    msg: customer_pb2.Account, fields: tuple[str, ...] | list[str], settings: CustomerSettings | None = None
) -> dict[str, Any]:
    cfg = settings or defaults()
    v = Violations()
    out: dict[str, Any] = {}
    for field in fields:
        if field == "name":
            out[field] = validation.text(v, field, msg.name, required=True)
        elif field == "industry":
            out[field] = validation.text(v, field, msg.industry, max_length=100)
        elif field == "website":
            site = msg.website.strip()
            if site and not WEBSITE.match(site):
                v.add(field, "is not a valid web address")
            out[field] = site
        elif field == "phone":
            out[field] = contact_points.phone(v, field, msg.phone, cfg.default_phone_region)
        elif field == "owner_id":
            out[field] = validation.reference(v, field, msg.owner_id)
        elif field == "classification":
            out[field] = validation.one_of(v, field, msg.classification, CLASSIFICATIONS, default="general")
        elif field == "tags":
            out[field] = tags(v, field, list(msg.tags))
        elif field == "address":
            entry = contact_points.address(v, msg.address, field)
            out[field] = {} if contact_points.is_empty_address(entry) else entry
    v.raise_if_any()
    return out
