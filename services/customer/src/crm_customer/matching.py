"""The explainable match score of two contacts, and the match keys that find candidates without a scan.

Score (0..100): the sum of the points of the rules that matched, capped at 100.

    email    70  an email address both contacts have (primary or secondary; stored lower-cased)
    phone    70  a phone number both contacts have (any of their numbers; stored in E.164)
    name   0..40 rapidfuzz similarity of the names, when at least 75: 40 * (similarity - 75) / 25.
                 The similarity is the best of token_sort_ratio over the normalised display names (word
                 order does not matter: "Wei Zhang" ~ "Zhang Wei") and ratio over the names without
                 spaces (Chinese names written with or without a space, or split differently between
                 first and last name: "张 伟" ~ "张伟").
    account  30  the same account; only added when another rule matched (colleagues are not duplicates)

Match keys (kind, value), stored per contact in `contact_match_keys` and looked up by equality:
    email:<address>, phone:<E.164>, name:<the name without spaces, words sorted for Latin script>,
    block:<a blocking key for Latin-script names: the last name and the first initial>.
Two contacts can only score on email or phone if they share that key, and only score on name (at least
75 similar) in practice if they share the name or the blocking key, so candidates come from the keys alone.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz

from crm_customer.names import display_name, has_cjk

EMAIL = "email"
PHONE = "phone"
NAME = "name"
BLOCK = "block"
ACCOUNT = "account"
KEY_KINDS = (EMAIL, PHONE, NAME, BLOCK)

EMAIL_POINTS = 70
PHONE_POINTS = 70
NAME_MAX_POINTS = 40
NAME_MIN_SIMILARITY = 75
ACCOUNT_POINTS = 30
DEFAULT_THRESHOLD = 70
MAX_KEY = 320


@dataclass(frozen=True)
class Reason:
    rule: str
    detail: str
    points: int


@dataclass(frozen=True)
class Match:
    score: int
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Profile:
    """What matching looks at of one contact."""

    id: str
    display_name: str
    full: str  # normalised display name, words separated by one space
    compact: str  # without spaces
    emails: frozenset[str] = field(default_factory=frozenset)
    phones: frozenset[str] = field(default_factory=frozenset)
    account_id: str = ""
    last: str = ""
    first: str = ""


def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation dropped, runs of spaces collapsed."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    kept = "".join(ch if ch.isalnum() else " " for ch in text)
    return " ".join(kept.split())


def _entries(values: Mapping[str, Any], list_field: str, key: str, top_field: str) -> frozenset[str]:
    out = {str(e.get(key) or "").strip() for e in values.get(list_field) or () if isinstance(e, Mapping)}
    top = str(values.get(top_field) or "").strip()
    if top:
        out.add(top)
    out.discard("")
    return frozenset(v.lower() if top_field == "email" else v for v in out)


def profile(values: Mapping[str, Any], id_: str = "") -> Profile:
    """The profile of a contact given its column values (a row's or a create's)."""
    first, last = str(values.get("first_name") or ""), str(values.get("last_name") or "")
    shown = display_name(first, last)
    full = normalise(shown)
    return Profile(
        id=id_ or str(values.get("id") or ""),
        display_name=shown,
        full=full,
        compact=full.replace(" ", ""),
        emails=_entries(values, "emails", "address", "email"),
        phones=_entries(values, "phones", "number", "phone"),
        account_id=str(values.get("account_id") or ""),
        last=normalise(last).replace(" ", ""),
        first=normalise(first).replace(" ", ""),
    )


def row_values(row: Any) -> dict[str, Any]:
    names = ("id", "first_name", "last_name", "email", "phone", "emails", "phones", "account_id")
    return {n: getattr(row, n, None) for n in names}


def name_key(p: Profile) -> str:
    if not p.compact:
        return ""
    if has_cjk(p.full):
        return p.compact
    return "".join(sorted(p.full.split()))


def block_key(p: Profile) -> str:
    if not p.compact or has_cjk(p.full):
        # CJK names: a prefix (the family name and one more character) groups far too many people - at
        # 100k contacts the pairs grow quadratically - so the exact name key (spaces and the split between
        # first and last name ignored) is their only name block.
        return ""
    if p.last and p.first:
        return f"{p.last}|{p.first[0]}"
    return (p.last or p.first)[:6]


def match_keys(p: Profile) -> set[tuple[str, str]]:
    keys = {(EMAIL, e) for e in p.emails} | {(PHONE, n) for n in p.phones}
    for kind, value in ((NAME, name_key(p)), (BLOCK, block_key(p))):
        if value:
            keys.add((kind, value))
    return {(k, v[:MAX_KEY]) for k, v in keys}


def name_similarity(a: Profile, b: Profile) -> float:
    if not a.compact or not b.compact:
        return 0.0
    return max(fuzz.token_sort_ratio(a.full, b.full), fuzz.ratio(a.compact, b.compact))


def score(a: Profile, b: Profile) -> Match:
    """How likely `a` and `b` are the same person, with the reasons (see the module docstring)."""
    reasons: list[Reason] = []
    emails = sorted(a.emails & b.emails)
    if emails:
        reasons.append(Reason(EMAIL, ", ".join(emails), EMAIL_POINTS))
    phones = sorted(a.phones & b.phones)
    if phones:
        reasons.append(Reason(PHONE, ", ".join(phones), PHONE_POINTS))
    similarity = name_similarity(a, b)
    if similarity >= NAME_MIN_SIMILARITY:
        points = round(NAME_MAX_POINTS * (similarity - NAME_MIN_SIMILARITY) / (100 - NAME_MIN_SIMILARITY))
        if points > 0:
            detail = f"similarity {round(similarity)}: {a.display_name} ~ {b.display_name}"
            reasons.append(Reason(NAME, detail, points))
    if reasons and a.account_id and a.account_id == b.account_id:
        reasons.append(Reason(ACCOUNT, a.account_id, ACCOUNT_POINTS))
    return Match(min(100, sum(r.points for r in reasons)), tuple(reasons))


def best_first(matches: Iterable[tuple[Profile, Match]]) -> list[tuple[Profile, Match]]:
    return sorted(matches, key=lambda pm: (-pm[1].score, pm[0].id))
