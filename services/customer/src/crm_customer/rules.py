"""Validation and normalisation of contacts and accounts on every write."""

from __future__ import annotations

import os
import re
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from crm.customer.v1 import customer_pb2
from crm_kit import validation
from crm_kit.errors import Violations

CONTACT_FIELDS = ("first_name", "last_name", "email", "phone", "account_id", "owner_id", "tags")
ACCOUNT_FIELDS = ("name", "industry", "website")
TAG = re.compile(r"^[^,\"\\]{1,50}$")
WEBSITE = re.compile(r"^(https?://)?[^\s/$.?#][^\s]*\.[^\s]{2,}$", re.IGNORECASE)


def default_region() -> str:
    return os.environ.get("CUSTOMER_DEFAULT_PHONE_REGION", "CN")


def email(v: Violations, field: str, value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        v.add(field, f"is not a valid email address: {exc}")
        return value


def phone(v: Violations, field: str, value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    try:
        number = phonenumbers.parse(value, None if value.startswith("+") else default_region())
    except phonenumbers.NumberParseException as exc:
        v.add(field, f"is not a valid phone number: {exc}")
        return value
    if not phonenumbers.is_valid_number(number):
        v.add(field, "is not a valid phone number")
        return value
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def tags(v: Violations, field: str, values: list[str]) -> list[str]:
    cleaned: list[str] = []
    for i, tag in enumerate(values):
        tag = " ".join(tag.split())
        if not TAG.match(tag):
            v.add(f"{field}[{i}]", "must be 1 to 50 characters without commas, quotes or backslashes")
        elif tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > 100:
        v.add(field, "at most 100 tags")
    return cleaned


def contact_values(msg: customer_pb2.Contact, fields: tuple[str, ...] | list[str]) -> dict[str, Any]:
    v = Violations()
    out: dict[str, Any] = {}
    for name in fields:
        if name in ("first_name", "last_name"):
            out[name] = validation.text(v, name, getattr(msg, name), max_length=100)
        elif name == "email":
            out[name] = email(v, name, msg.email)
        elif name == "phone":
            out[name] = phone(v, name, msg.phone)
        elif name in ("account_id", "owner_id"):
            out[name] = validation.reference(v, name, getattr(msg, name))
        elif name == "tags":
            out[name] = tags(v, name, list(msg.tags))
    if "first_name" in out and "last_name" in out and not (out["first_name"] or out["last_name"]):
        v.add("last_name", "a contact needs a first or a last name")
    v.raise_if_any()
    return out


def account_values(msg: customer_pb2.Account, fields: tuple[str, ...] | list[str]) -> dict[str, Any]:
    v = Violations()
    out: dict[str, Any] = {}
    for name in fields:
        if name == "name":
            out[name] = validation.text(v, name, msg.name, required=True)
        elif name == "industry":
            out[name] = validation.text(v, name, msg.industry, max_length=100)
        elif name == "website":
            site = msg.website.strip()
            if site and not WEBSITE.match(site):
                v.add(name, "is not a valid web address")
            out[name] = site
    v.raise_if_any()
    return out
