"""The text a contact is found by, and how a query is cut into terms. Pure functions, shared by the write
path (crm_customer.indexing), bulk loaders and the query builder (crm_customer.search).

The document is one line of space-separated tokens, lower-cased and NFKC-normalised:

    " {display name} {first} {last} {emails...} {phones, E.164 and national digits...} {company}
      {initials and the 1- and 2-character grams of CJK names and company} "

Matching (the same on SQLite FTS5 trigram and PostgreSQL):
  - a term of 3+ characters matches anywhere in the document (a substring: Chinese names, email and
    phone fragments, company names);
  - a 2-character term matches the start of a token (" li", "欧阳"), a 1-character term a whole token
    (an initial, or one character of a Chinese name: "王"). The CJK grams make every 1- and 2-character
    substring of a Chinese name, and every 2-character one of a company, a token, so short Chinese queries
    still hit the index.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import cache

import phonenumbers

from crm_customer.names import CJK_RUN, display_name, has_cjk, is_cjk

MAX_QUERY_LENGTH = 200
MAX_TERMS = 8
SHORT = 3  # terms shorter than this are token (prefix) matches
_PHONE_QUERY = re.compile(r"^\+?[\d\s\-().]+$")


def normalise(text: str) -> str:
    """NFKC (full-width digits and letters become ASCII), lower-cased, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


@cache
def _trunk_prefix(country_code: int) -> str:
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region, None) if region else None
    return (metadata.national_prefix or "") if metadata is not None else ""


def _dialled_without_trunk(country_code: str, national: str) -> bool:
    """Numbers dialled at home without the trunk prefix: Chinese mobiles (1xx xxxx xxxx; Beijing's fixed
    lines 10 xxxx xxxx are one digit shorter)."""
    return country_code == "86" and len(national) == 11 and national.startswith("1")


def national_digits(e164: str) -> str:
    """The number with its national (trunk) prefix, digits only ("+861065529988" -> "01065529988"), so
    a query typed the domestic way finds it; "" when the country has no trunk prefix or the number is
    dialled without one (the E.164 digits then already contain the national number)."""
    if not e164.startswith("+"):
        return ""
    digits = e164[1:]
    for size in (1, 2, 3):  # country calling codes are prefix-free
        code = digits[:size]
        if code.isdigit() and int(code) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            trunk = _trunk_prefix(int(code))
            national = digits[size:]
            if not trunk or _dialled_without_trunk(code, national) or trunk + national == digits:
                return ""
            return trunk + national
    return ""


def short_tokens(texts: Iterable[str], *, unigrams: bool = True) -> list[str]:
    """Initials of words, and every 2-character (and, with `unigrams`, 1-character) gram of each run of
    CJK characters."""
    out: dict[str, None] = {}
    for text in texts:
        normal = normalise(text)
        for word in normal.split():
            if not is_cjk(word[0]):
                out[word[0]] = None
        for run in CJK_RUN.findall(normal):
            for i, ch in enumerate(run):
                if unigrams or len(run) == 1:
                    out[ch] = None
                if i + 1 < len(run):
                    out[run[i : i + 2]] = None
    return list(out)


def contact_document(
    *,
    first_name: str,
    last_name: str,
    emails: Iterable[str] = (),
    phones: Iterable[str] = (),
    company: str = "",
) -> str:
    name = display_name(first_name, last_name)
    # A CJK display name contains both parts (and their grams are added below); others need each word.
    parts: list[str] = [name] if has_cjk(name) else [name, first_name, last_name]
    parts.extend(emails)
    for number in phones:
        parts.extend((number, national_digits(number)))
    parts.append(company)
    seen: dict[str, None] = {}
    for part in parts:
        for token in normalise(part).split():
            seen[token] = None
    # Names: any one or two characters; companies: any two (short names such as 腾讯), not every character.
    for token in [*short_tokens((first_name, last_name)), *short_tokens((company,), unigrams=False)]:
        seen[token] = None
    return " " + " ".join(seen) + " "


def query_terms(q: str) -> list[str]:
    """The terms of a query, all of which must match. A query that looks like a phone number is one term of
    its digits (so "138 0013 8000" and "(010) 6552-9988" find the stored E.164 number)."""
    text = normalise(q)
    if not text:
        return []
    if _PHONE_QUERY.match(text):
        digits = "".join(ch for ch in text if ch.isdigit())
        if len(digits) >= SHORT:
            return [digits]
    return list(dict.fromkeys(text.split()))[:MAX_TERMS]


def is_short(term: str) -> bool:
    return len(term) < SHORT
