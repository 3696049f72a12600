"""Keyset pagination on the UUIDv7 primary key with opaque page tokens bound to the query's filters.

A list ordered by more than the id (e.g. newest first on `(occurred_at, id)`) keeps a composite key: pass
the key's parts as a sequence to `encode_token` and read them back with `decode_key`."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
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


def encode_token(after: str | Sequence[str], filters: dict[str, Any]) -> str:
    """A token for the page after `after`: an id, or the parts of a composite key (see `decode_key`)."""
    key: str | list[str] = after if isinstance(after, str) else [str(part) for part in after]
    raw = json.dumps({"a": key, "f": fingerprint(filters)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, filters: dict[str, Any]) -> str | None:
    """The id after which the next page starts, or None for the first page."""
    after = _decode(token, filters)
    if after is not None and not isinstance(after, str):
        raise _foreign()
    return after


def decode_key(token: str, filters: dict[str, Any], parts: int) -> list[str] | None:
    """The composite key (`parts` strings) after which the next page starts, or None for the first page."""
    after = _decode(token, filters)
    if after is not None and (isinstance(after, str) or len(after) != parts):
        raise _foreign()
    return after


def _foreign() -> InvalidArgument:
    return InvalidArgument.field("page_token", "is not a token this service issued")


def _decode(token: str, filters: dict[str, Any]) -> str | list[str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after, fp = data["a"], data["f"]
        valid_key = isinstance(after, str) or (
            isinstance(after, list) and bool(after) and all(isinstance(part, str) for part in after)
        )
        if not valid_key or not isinstance(fp, str):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise _foreign() from None
    if fp != fingerprint(filters):
        raise InvalidArgument.field("page_token", "was issued for different filters")
    return after  # type: ignore[no-any-return]
