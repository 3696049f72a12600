"""Keyset pagination on the UUIDv7 primary key with opaque page tokens bound to the query's filters."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from crm_kit.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(value: int) -> int:
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"must be between 1 and {MAX_PAGE_SIZE}")
    return value


def fingerprint(filters: dict[str, Any]) -> str:
    raw = json.dumps(filters, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_token(after: str, filters: dict[str, Any]) -> str:
    raw = json.dumps({"a": after, "f": fingerprint(filters)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, filters: dict[str, Any]) -> str | None:
    """The id after which the next page starts, or None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after, fp = data["a"], data["f"]
        if not isinstance(after, str) or not isinstance(fp, str):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "is not a token this service issued") from None
    if fp != fingerprint(filters):
        raise InvalidArgument.field("page_token", "was issued for different filters")
    return after
