"""Between ORM rows and proto messages, and field masks, done one way for every service."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from crm_kit.errors import InvalidArgument

M = TypeVar("M", bound=Message)
OUTPUT_ONLY = frozenset({"id", "version", "create_time", "update_time"})


def to_message(row: Any, message_cls: type[M], **overrides: Any) -> M:
    """Copy every attribute of `row` that the message declares (timestamps and lists included)."""
    message = message_cls()
    for field in message_cls.DESCRIPTOR.fields:
        name = field.name
        value = overrides[name] if name in overrides else getattr(row, name, None)
        if value is None:
            continue
        target = getattr(message, name)
        if isinstance(value, datetime):
            target.FromDatetime(value)
        elif field.is_repeated:
            target.extend(value)
        else:
            setattr(message, name, value)
    return message


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def mask_paths(mask: FieldMask, mutable: Iterable[str]) -> list[str]:
    """The fields an update may change: named by the mask, and all mutable."""
    allowed = set(mutable)
    paths = [p for p in mask.paths if p not in OUTPUT_ONLY]
    if not paths:
        raise InvalidArgument.field("update_mask", "must name at least one field to change")
    unknown = sorted(p for p in paths if p not in allowed)
    if unknown:
        raise InvalidArgument.field("update_mask", f"unknown or read-only fields: {', '.join(unknown)}")
    return paths
