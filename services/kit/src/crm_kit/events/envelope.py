"""The event envelope: CloudEvents 1.0 in structured JSON mode, and the NATS subjects events travel on.

Event types read `crm.<context>.<entity>.<action>` (e.g. `crm.customer.contact.created`); the subject of an
event is `crm.events.<tenant_id>.<context>.<entity>.<action>`, so a consumer can filter by tenant, context,
entity or action with ordinary NATS wildcards (see `subject_filter`).
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

SPECVERSION = "1.0"
DATA_CONTENT_TYPE = "application/json"
CONTENT_TYPE = "application/cloudevents+json"  # the message as a whole (structured mode)
SUBJECT_PREFIX = "crm.events"
TYPE_PREFIX = "crm"

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # context, entity and action names
_TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")  # no dots, spaces or wildcards: it is one subject token


class MalformedEvent(ValueError):
    """The bytes are not a valid CRM CloudEvent; the message says which part is wrong."""


class InvalidSubject(ValueError):
    """An event type, tenant id or filter token cannot form a NATS subject."""


def parse_type(event_type: str) -> tuple[str, str, str]:
    """Split `crm.<context>.<entity>.<action>` into its three names."""
    parts = event_type.split(".") if isinstance(event_type, str) else []
    if len(parts) != 4 or parts[0] != TYPE_PREFIX or not all(_NAME.fullmatch(p) for p in parts[1:]):
        raise InvalidSubject(f"event type must be crm.<context>.<entity>.<action>, got {event_type!r}")
    return parts[1], parts[2], parts[3]


def check_tenant(tenant_id: str) -> str:
    if not isinstance(tenant_id, str) or not _TENANT.fullmatch(tenant_id):
        raise InvalidSubject(
            f"tenant id must be 1-64 letters, digits, '-' or '_' (one subject token), got {tenant_id!r}"
        )
    return tenant_id


def nats_subject(tenant_id: str, event_type: str) -> str:
    """`crm.events.<tenant_id>.<context>.<entity>.<action>` for an event of `event_type`."""
    context, entity, action = parse_type(event_type)
    return f"{SUBJECT_PREFIX}.{check_tenant(tenant_id)}.{context}.{entity}.{action}"


def subject_filter(
    context: str | None = None,
    entity: str | None = None,
    action: str | None = None,
    tenant: str = "*",
) -> str:
    """A consumer filter: unset names become `*`, and trailing unset names collapse into `>`.

    `subject_filter("customer")` is `crm.events.*.customer.>`;
    `subject_filter(action="deleted")` is `crm.events.*.*.*.deleted`.
    """
    if tenant != "*":
        check_tenant(tenant)
    names = [context, entity, action]
    for name in names:
        if name is not None and not _NAME.fullmatch(name):
            raise InvalidSubject(f"filter names must be plain subject tokens, got {name!r}")
    while names and names[-1] is None:
        names.pop()
    tokens = [SUBJECT_PREFIX, tenant, *(n or "*" for n in names)]
    if len(names) < 3:
        tokens.append(">")
    return ".".join(tokens)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a `Z`."""
    if value.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(value: Any) -> Any:
    """Types services commonly put in event data, rendered the way the REST JSON renders them."""
    if isinstance(value, datetime):
        return format_time(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable in event data")


def dumps(value: Any) -> str:
    """Compact JSON that keeps non-ASCII text (e.g. Chinese names) as it is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


@dataclass(frozen=True)
class Event:
    """One domain event. `subject` is the id of the resource the event is about (CloudEvents `subject`),
    not the NATS subject, which is `nats_subject`."""

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    tenant_id: str
    data: dict[str, Any] = field(default_factory=dict, hash=False)
    traceparent: str = ""

    @property
    def nats_subject(self) -> str:
        return nats_subject(self.tenant_id, self.type)

    def to_dict(self) -> dict[str, Any]:
        return {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": format_time(self.time),
            "datacontenttype": DATA_CONTENT_TYPE,
            "tenantid": self.tenant_id,
            "traceparent": self.traceparent,
            "data": self.data,
        }

    def to_json(self) -> bytes:
        return dumps(self.to_dict()).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes | bytearray | memoryview | str) -> Event:
        try:
            text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
            doc = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedEvent(f"not UTF-8 JSON: {exc}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> Event:
        if not isinstance(doc, dict):
            raise MalformedEvent("the event must be a JSON object")
        if doc.get("specversion") != SPECVERSION:
            raise MalformedEvent(f"specversion must be {SPECVERSION!r}, got {doc.get('specversion')!r}")
        for name in ("id", "source", "type", "tenantid"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise MalformedEvent(f"{name!r} must be a non-empty string")
        for name in ("subject", "traceparent"):
            if not isinstance(doc.get(name, ""), str):
                raise MalformedEvent(f"{name!r} must be a string")
        content_type = doc.get("datacontenttype", DATA_CONTENT_TYPE)
        if content_type != DATA_CONTENT_TYPE:
            raise MalformedEvent(f"datacontenttype must be {DATA_CONTENT_TYPE!r}, got {content_type!r}")
        try:
            parse_type(doc["type"])
            check_tenant(doc["tenantid"])
        except InvalidSubject as exc:
            raise MalformedEvent(str(exc)) from None
        data = doc.get("data", {})
        if not isinstance(data, dict):
            raise MalformedEvent("'data' must be a JSON object")
        return cls(
            id=doc["id"],
            source=doc["source"],
            type=doc["type"],
            subject=doc.get("subject", ""),
            time=_parse_time(doc.get("time")),
            tenant_id=doc["tenantid"],
            data=data,
            traceparent=doc.get("traceparent", ""),
        )


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise MalformedEvent("'time' must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedEvent(f"'time' is not RFC 3339: {value!r}") from None
    if parsed.tzinfo is None:
        raise MalformedEvent(f"'time' needs a UTC offset: {value!r}")
    return parsed.astimezone(UTC)
