"""Typed phones, emails and addresses (one of each marked primary), social accounts, preferences and
interests: validated and normalised on every write, each problem named by its path (`phones[1].number`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email

import crm_kit.validation as validation
from crm_kit.errors import Violations

PHONE_TYPES = ("mobile", "work", "home", "fax", "other")
EMAIL_TYPES = ("work", "personal", "other")
ADDRESS_TYPES = ("billing", "shipping", "home", "work", "other")
SOCIAL_PLATFORMS = ("wechat", "weibo", "douyin", "linkedin", "x", "facebook", "other")
MAX_ENTRIES = 20
MAX_INTERESTS = 100

# ISO 3166-1 alpha-2
_COUNTRY_CODES = (
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY "
    "BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK "
    "FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR "
    "IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK "
    "ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM "
    "PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF "
    "TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW "
)
COUNTRIES = frozenset(_COUNTRY_CODES.split())
_INTEREST = re.compile(r"^[^,\"\\]{1,100}$")


# --- single values -------------------------------------------------------------------------------------


def email(v: Violations, field: str, value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        v.add(field, f"is not a valid email address: {exc}")
        return value


# The type of each number `phone` validated last, by E.164: parsing is the costly part of both (an import
# validates a whole file of numbers), and `phone_type_of` is asked about the number `phone` just returned.
_KNOWN_TYPES: dict[str, str] = {}
_KNOWN_TYPES_MAX = 4096


def _type_name(number: phonenumbers.PhoneNumber) -> str:
    return "mobile" if phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.MOBILE else "other"


def phone(v: Violations, field: str, value: str, region: str) -> str:
    value = value.strip()
    if not value:
        return ""
    try:
        number = phonenumbers.parse(value, None if value.startswith("+") else region)
    except phonenumbers.NumberParseException as exc:
        v.add(field, f"is not a valid phone number: {exc}")
        return value
    if not phonenumbers.is_valid_number(number):
        v.add(field, "is not a valid phone number")
        return value
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(_KNOWN_TYPES) >= _KNOWN_TYPES_MAX:
        _KNOWN_TYPES.clear()
    _KNOWN_TYPES[e164] = _type_name(number)
    return e164


def phone_type_of(number: str) -> str:
    """The type a number written alone (`phone`) gets in `phones`: mobile when it is one, else other."""
    known = _KNOWN_TYPES.get(number)
    if known is not None:
        return known
    try:
        return _type_name(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return "other"


def country(v: Violations, field: str, value: str) -> str:
    value = value.strip().upper()
    if value and value not in COUNTRIES:
        v.add(field, "must be an ISO 3166-1 alpha-2 country code such as CN or US")
    return value


# --- lists ---------------------------------------------------------------------------------------------


def _too_many(v: Violations, field: str, items: Sequence[Any], limit: int = MAX_ENTRIES) -> bool:
    if len(items) > limit:
        v.add(field, f"at most {limit} entries")
        return True
    return False


def _one_primary(v: Violations, field: str, entries: list[dict[str, Any]], flags: Sequence[bool]) -> None:
    """Exactly one primary in a non-empty list: the first is chosen when none is marked; a second one is a
    violation naming it."""
    marked = [i for i, flag in enumerate(flags) if flag]
    for i in marked[1:]:
        v.add(f"{field}[{i}].primary", f"only one entry may be primary ({field}[{marked[0]}] already is)")
    chosen = marked[0] if marked else 0
    for i, entry in enumerate(entries):
        entry["primary"] = i == chosen


def _typed(v: Violations, field: str, value: str, choices: tuple[str, ...]) -> str:
    return validation.one_of(v, field, value, choices, default="other")


def _unique(v: Violations, field: str, values: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        if value and value in seen:
            v.add(field.format(i=i), f"repeats entry {seen[value]}")
        seen.setdefault(value, i)


def phones(v: Violations, items: Sequence[Any], region: str, field: str = "phones") -> list[dict[str, Any]]:
    if _too_many(v, field, items):
        return []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        number = phone(v, f"{field}[{i}].number", item.number, region)
        if not number:
            v.add(f"{field}[{i}].number", "is required")
        out.append({"type": _typed(v, f"{field}[{i}].type", item.type, PHONE_TYPES), "number": number})
    _unique(v, field + "[{i}].number", [e["number"] for e in out])
    _one_primary(v, field, out, [item.primary for item in items])
    return out


def emails(v: Violations, items: Sequence[Any], field: str = "emails") -> list[dict[str, Any]]:
    if _too_many(v, field, items):
        return []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        address = email(v, f"{field}[{i}].address", item.address)
        if not address:
            v.add(f"{field}[{i}].address", "is required")
        out.append({"type": _typed(v, f"{field}[{i}].type", item.type, EMAIL_TYPES), "address": address})
    _unique(v, field + "[{i}].address", [e["address"] for e in out])
    _one_primary(v, field, out, [item.primary for item in items])
    return out


def address(v: Violations, item: Any, field: str) -> dict[str, Any]:
    """One address (without the primary flag); empty fields are allowed, an entirely empty one is not."""
    out = {
        "type": _typed(v, f"{field}.type", item.type, ADDRESS_TYPES),
        "street": validation.text(v, f"{field}.street", item.street.replace("\n", " "), max_length=255),
        "city": validation.text(v, f"{field}.city", item.city, max_length=100),
        "region": validation.text(v, f"{field}.region", item.region, max_length=100),
        "postal_code": validation.text(v, f"{field}.postal_code", item.postal_code, max_length=20).upper(),
        "country": country(v, f"{field}.country", item.country),
    }
    return out


def is_empty_address(entry: dict[str, Any]) -> bool:
    return not any(entry[k] for k in ("street", "city", "region", "postal_code", "country"))


def addresses(v: Violations, items: Sequence[Any], field: str = "addresses") -> list[dict[str, Any]]:
    if _too_many(v, field, items):
        return []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        entry = address(v, item, f"{field}[{i}]")
        if is_empty_address(entry):
            v.add(f"{field}[{i}]", "an address needs at least a street, city, region, postal code or country")
        out.append(entry)
    _one_primary(v, field, out, [item.primary for item in items])
    return out


def social_accounts(v: Violations, items: Sequence[Any], field: str = "social_accounts") -> list[dict[str, Any]]:
    if _too_many(v, field, items):
        return []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        platform = validation.one_of(v, f"{field}[{i}].platform", item.platform, SOCIAL_PLATFORMS)
        handle = validation.text(v, f"{field}[{i}].handle", item.handle, required=True, max_length=100)
        out.append({"platform": platform, "handle": handle})
    _unique(v, field + "[{i}].handle", [f"{e['platform']}\x00{e['handle'].lower()}" for e in out])
    return out


def preferences(v: Violations, items: Sequence[Any], field: str = "preferences") -> list[dict[str, Any]]:
    if _too_many(v, field, items, 50):
        return []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        key = validation.text(v, f"{field}[{i}].key", item.key, required=True, max_length=100)
        value = validation.text(v, f"{field}[{i}].value", item.value, max_length=500)
        out.append({"key": key, "value": value})
    _unique(v, field + "[{i}].key", [e["key"] for e in out])
    return out


def interests(v: Violations, values: Sequence[str], field: str = "interests") -> list[str]:
    cleaned: list[str] = []
    for i, value in enumerate(values):
        value = " ".join(value.split())
        if not _INTEREST.match(value):
            v.add(f"{field}[{i}]", "must be 1 to 100 characters without commas, quotes or backslashes")
        elif value not in cleaned:
            cleaned.append(value)
    if len(cleaned) > MAX_INTERESTS:
        v.add(field, f"at most {MAX_INTERESTS} interests")
    return cleaned


# --- the primary entry mirrored at the top level (`email` <-> `emails`, `phone` <-> `phones`) ---------


def mirror(
    v: Violations,
    *,
    top_field: str,
    list_field: str,
    key: str,
    top: str | None,
    entries: list[dict[str, Any]] | None,
    current: list[dict[str, Any]],
    new_entry: Callable[[str], dict[str, Any]],
    explicit_primary: bool,
) -> tuple[str, list[dict[str, Any]]]:
    """Reconcile the top-level value (`top`, None when not written) with its list (`entries`, None when not
    written; `current` is the stored list). Returns (top-level value, list).

    - the list written (not empty): it wins; a top-level value written with it must be one of its entries
      (that entry becomes primary when none is marked) or empty;
    - an empty list written with the top-level value (as every create does): the list is that value alone;
    - the top-level value written alone: it replaces the primary entry (or becomes the first entry); an
      existing entry with that value becomes primary instead; empty removes the primary entry.
    """
    if entries is not None and not entries and top is not None:
        entries, current = None, []  # an empty list written with a value: the list is that value alone
    if entries is not None:
        if top:
            matching = [i for i, e in enumerate(entries) if e[key] == top]
            if not matching:
                v.add(top_field, f"must be one of the {list_field} when both are written")
            elif not explicit_primary:
                for i, entry in enumerate(entries):
                    entry["primary"] = i == matching[0]
            elif not entries[matching[0]]["primary"]:
                v.add(top_field, f"must be the primary entry of {list_field} when both are written")
        primary = next((e[key] for e in entries if e["primary"]), "")
        return primary, entries
    result = [dict(e) for e in current]
    if top is None:
        return next((e[key] for e in result if e.get("primary")), ""), result
    at = next((i for i, e in enumerate(result) if e.get("primary")), None)
    if not top:
        if at is not None:
            del result[at]
        if result:
            result[0]["primary"] = True
        return (result[0][key] if result else ""), result
    existing = next((i for i, e in enumerate(result) if e[key] == top), None)
    if existing is not None:
        for i, entry in enumerate(result):
            entry["primary"] = i == existing
    elif at is not None:
        result[at] = {**result[at], key: top}
    else:
        result.insert(0, {**new_entry(top), "primary": True})
        for entry in result[1:]:
            entry["primary"] = False
    return top, result
