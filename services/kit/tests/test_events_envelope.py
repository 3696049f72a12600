"""The CloudEvents envelope and NATS subjects (no server needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from crm_kit.events import Event, InvalidSubject, MalformedEvent, nats_subject, parse_type, subject_filter


def make_event(**overrides: object) -> Event:
    fields: dict[str, object] = {
        "id": "0190f0e2-0000-7000-8000-000000000001",
        "source": "crm/customer",
        "type": "crm.customer.contact.created",
        "subject": "0190f0e2-0000-7000-8000-0000000000aa",
        "time": datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=UTC),
        "tenant_id": "tenant-1",
        "data": {"name": "张三", "tags": ["重要"], "score": 3},
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_everything_and_chinese_text() -> None:
    event = make_event()
    raw = event.to_json()
    assert "张三".encode() in raw  # not \u escapes
    doc = json.loads(raw)
    assert doc["specversion"] == "1.0"
    assert doc["datacontenttype"] == "application/json"
    assert doc["tenantid"] == "tenant-1"
    assert doc["time"] == "2025-03-01T12:30:05.123456Z"
    assert Event.from_json(raw) == event


def test_time_is_normalised_to_utc() -> None:
    east8 = timezone(timedelta(hours=8))
    event = make_event(time=datetime(2025, 3, 1, 20, 0, tzinfo=east8))
    parsed = Event.from_json(event.to_json())
    assert parsed.time == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert parsed.time.tzinfo is not None


def test_common_python_values_in_data_serialise() -> None:
    event = make_event(data={"amount": Decimal("12.50"), "at": datetime(2025, 1, 1, tzinfo=UTC)})
    assert json.loads(event.to_json())["data"] == {"amount": "12.50", "at": "2025-01-01T00:00:00.000000Z"}
    with pytest.raises(TypeError):
        make_event(data={"x": object()}).to_json()


def _doc(**changes: object) -> bytes:
    doc = json.loads(make_event().to_json())
    for key, value in changes.items():
        if value is ...:
            doc.pop(key)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (_doc(specversion="0.3"), "specversion"),
        (_doc(id=...), "'id'"),
        (_doc(id=""), "'id'"),
        (_doc(source=7), "'source'"),
        (_doc(type="customer.created"), "crm.<context>.<entity>.<action>"),
        (_doc(type="crm.customer.contact.created.extra"), "crm.<context>.<entity>.<action>"),
        (_doc(tenantid="a.b"), "tenant id"),
        (_doc(tenantid="a b"), "tenant id"),
        (_doc(tenantid="*"), "tenant id"),
        (_doc(time="2025-03-01T12:00:00"), "UTC offset"),
        (_doc(time="yesterday"), "RFC 3339"),
        (_doc(time=...), "'time'"),
        (_doc(data=[1]), "'data'"),
        (_doc(datacontenttype="text/plain"), "datacontenttype"),
        (_doc(subject=5), "'subject'"),
    ],
)
def test_malformed_events_are_rejected_clearly(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message.replace("*", r"\*").replace(".", r"\.")):
        Event.from_json(raw)


def test_nats_subject() -> None:
    assert nats_subject("t1", "crm.customer.contact.created") == "crm.events.t1.customer.contact.created"
    assert make_event().nats_subject == "crm.events.tenant-1.customer.contact.created"
    assert parse_type("crm.sales.deal.stage_changed") == ("sales", "deal", "stage_changed")


@pytest.mark.parametrize("tenant", ["", "a.b", "a b", "*", ">", "t\n", "x" * 65])
def test_nats_subject_rejects_bad_tenant_tokens(tenant: str) -> None:
    with pytest.raises(InvalidSubject):
        nats_subject(tenant, "crm.customer.contact.created")


@pytest.mark.parametrize("event_type", ["crm.customer.contact", "x.customer.contact.created", "crm.a.*.b"])
def test_nats_subject_rejects_bad_types(event_type: str) -> None:
    with pytest.raises(InvalidSubject):
        nats_subject("t1", event_type)


def test_subject_filter() -> None:
    assert subject_filter() == "crm.events.*.>"
    assert subject_filter("customer") == "crm.events.*.customer.>"
    assert subject_filter("customer", "contact") == "crm.events.*.customer.contact.>"
    assert subject_filter("customer", "contact", "created") == "crm.events.*.customer.contact.created"
    assert subject_filter(action="deleted") == "crm.events.*.*.*.deleted"
    assert subject_filter("sales", action="won") == "crm.events.*.sales.*.won"
    assert subject_filter("customer", tenant="t1") == "crm.events.t1.customer.>"
    with pytest.raises(InvalidSubject):
        subject_filter("customer.contact")
    with pytest.raises(InvalidSubject):
        subject_filter(tenant="a.b")
