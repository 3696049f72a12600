"""JSON <-> protobuf for the REST layer, with errors that name the offending field.

Request bodies are parsed field by field with google.protobuf.json_format (proto field names, unknown fields
rejected), so every problem in a body is reported at once. Server-owned keys are dropped before parsing.
Responses always include default values, and text is emitted as UTF-8 (not \\u escapes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, cast

from flask import Response, request
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from werkzeug.datastructures import MultiDict

from crm_gateway.rest.problems import FieldError, Problem, problem_type, validation_problem

# Keys the server owns on every resource: silently ignored on input (a forged tenant_id is not an error).
SERVER_OWNED = frozenset({"id", "tenant_id", "create_time", "update_time"})

_INT_TYPES = {
    FieldDescriptor.TYPE_INT32: "a 32-bit integer",
    FieldDescriptor.TYPE_SINT32: "a 32-bit integer",
    FieldDescriptor.TYPE_SFIXED32: "a 32-bit integer",
    FieldDescriptor.TYPE_UINT32: "a non-negative 32-bit integer",
    FieldDescriptor.TYPE_FIXED32: "a non-negative 32-bit integer",
    FieldDescriptor.TYPE_INT64: "a 64-bit integer",
    FieldDescriptor.TYPE_SINT64: "a 64-bit integer",
    FieldDescriptor.TYPE_SFIXED64: "a 64-bit integer",
    FieldDescriptor.TYPE_UINT64: "a non-negative 64-bit integer",
    FieldDescriptor.TYPE_FIXED64: "a non-negative 64-bit integer",
}
_WELL_KNOWN = {
    "google.protobuf.Timestamp": "an RFC 3339 timestamp string",
    "google.protobuf.Duration": 'a duration string such as "3.5s"',
    "google.protobuf.FieldMask": "a comma-separated string of field paths",
}


def is_repeated(fd: FieldDescriptor) -> bool:
    if hasattr(fd, "is_repeated"):  # protobuf >= 6
        return bool(fd.is_repeated)
    return bool(getattr(fd, "label", 0) == FieldDescriptor.LABEL_REPEATED)  # pragma: no cover - older protobuf


def message_type(fd: FieldDescriptor) -> Descriptor | None:
    """The message type of a message field; None for scalars and enums."""
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        return None
    desc: Descriptor | None = fd.message_type
    return desc


def enum_names(fd: FieldDescriptor) -> list[str]:
    return [v.name for v in fd.enum_type.values] if fd.enum_type is not None else []


def is_map(fd: FieldDescriptor) -> bool:
    desc = message_type(fd)
    return desc is not None and bool(desc.GetOptions().map_entry)


def expected_type(fd: FieldDescriptor) -> str:
    """What a JSON value for this field must look like, in words."""
    if is_map(fd):
        return "an object"
    if fd.type == FieldDescriptor.TYPE_STRING:
        single = "a string"
    elif fd.type == FieldDescriptor.TYPE_BOOL:
        single = "a boolean"
    elif fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        single = "a number"
    elif fd.type == FieldDescriptor.TYPE_BYTES:
        single = "a base64 string"
    elif fd.type == FieldDescriptor.TYPE_ENUM:
        single = "one of " + ", ".join(enum_names(fd))
    elif (desc := message_type(fd)) is not None:
        single = _WELL_KNOWN.get(desc.full_name, "an object")
    else:
        single = _INT_TYPES.get(fd.type, "a value")
    if is_repeated(fd):
        return f"an array of {single.removeprefix('a ').removeprefix('an ')} values"
    return single


def read_json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a problem (415, 400; 413 comes from MAX_CONTENT_LENGTH)."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise Problem(
            415,
            detail="send the body as application/json",
            type=problem_type("unsupported-media-type"),
        )
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise validation_problem([FieldError("body", "a JSON object is required")])
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Problem(
            400,
            title="Malformed JSON",
            detail=f"the body is not valid JSON: {exc}",
            type=problem_type("malformed-json"),
            errors=[FieldError("body", "malformed JSON")],
        ) from None
    if not isinstance(body, dict):
        raise validation_problem([FieldError("body", f"must be a JSON object, not {_json_kind(body)}")])
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def parse_fields(body: Mapping[str, Any], message: Message, *, drop: Iterable[str] = (), prefix: str = "") -> list[str]:
    """Merge `body` into `message` field by field; return the proto field names that were set.

    Keys in `drop` are ignored silently; unknown keys and values of the wrong type are collected and
    raised together as one 400 problem naming each field.
    """
    present, errors = _merge_fields(body, message, drop=drop, prefix=prefix)
    if errors:
        raise validation_problem(errors)
    return present


def _merge_fields(
    body: Mapping[str, Any], message: Message, *, drop: Iterable[str] = (), prefix: str = ""
) -> tuple[list[str], list[FieldError]]:
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    dropped = set(drop)
    errors: list[FieldError] = []
    present: list[str] = []
    for key, value in body.items():
        if key in dropped:
            continue
        fd = descriptor.fields_by_name.get(key)
        if fd is None:
            errors.append(FieldError(prefix + key, "unknown field"))
            continue
        part = type(message)()
        try:
            json_format.ParseDict({key: value}, part, ignore_unknown_fields=False)
        except json_format.ParseError as exc:
            errors.extend(_nested_errors(fd, value, prefix + key) or [FieldError(prefix + key, _type_error(fd, exc))])
            continue
        message.MergeFrom(part)
        present.append(key)
    return present, errors


def _nested_errors(fd: FieldDescriptor, value: Any, path: str) -> list[FieldError]:
    """What is wrong inside a message value (or a list of them), named down to the nested field
    (`options[0].value: unknown field`); empty when the value is not an object or list of objects of an
    ordinary message (the caller then names the field and its type)."""
    desc = fd.message_type
    if desc is None or desc.GetOptions().map_entry or desc.full_name.startswith("google.protobuf."):
        return []
    cls = GetMessageClass(desc)
    if is_repeated(fd):
        if not isinstance(value, list):
            return []
        errors: list[FieldError] = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                errors += _merge_fields(item, cls(), prefix=f"{path}[{i}].")[1]
            else:
                errors.append(FieldError(f"{path}[{i}]", f"must be an object, not {_json_kind(item)}"))
        return errors
    return _merge_fields(value, cls(), prefix=f"{path}.")[1] if isinstance(value, dict) else []


def _type_error(fd: FieldDescriptor, exc: Exception) -> str:
    """`must be <type>`, plus the parser's reason where it tells more than the type does."""
    message = f"must be {expected_type(fd)}"
    text = str(exc)
    if "out of range" in text.lower():
        return message + " (out of range)"
    if "timestamp" in text.lower() or "duration" in text.lower():
        if " field: " in text:
            text = text.split(" field: ", 1)[1]
        return f"{message} ({text.rsplit(' at ', 1)[0].rstrip('.')})"
    return message


def parse_query(args: MultiDict[str, str], message: Message, *, allowed: Iterable[str]) -> None:
    """Fill scalar request fields (filters, page_size, page_token) from query parameters, typed from the
    descriptor; unknown parameters and bad values are a 400 naming the parameter."""
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    allowed_names = set(allowed)
    errors: list[FieldError] = []
    for key in args:
        fd = descriptor.fields_by_name.get(key)
        if key not in allowed_names or fd is None:
            errors.append(FieldError(key, "unknown query parameter"))
            continue
        raw_values = args.getlist(key)
        if len(raw_values) > 1 and not is_repeated(fd):
            plural = descriptor.fields_by_name.get(f"{key}s")
            hint = f"; repeat {plural.name}= for several" if plural is not None and is_repeated(plural) else ""
            errors.append(FieldError(key, f"takes one value, not {len(raw_values)}{hint}"))
            continue
        try:
            values = [_scalar_from_text(fd, raw) for raw in raw_values]
            json_value: Any = values if is_repeated(fd) else values[-1]
            part = type(message)()
            json_format.ParseDict({key: json_value}, part)
        except (ValueError, json_format.ParseError) as exc:
            errors.append(FieldError(key, _type_error(fd, exc)))
            continue
        message.MergeFrom(part)
    if errors:
        raise validation_problem(errors)


def _scalar_from_text(fd: FieldDescriptor, raw: str) -> Any:
    if fd.type in _INT_TYPES:
        try:
            return int(raw.strip(), 10)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if fd.type == FieldDescriptor.TYPE_BOOL:
        lowered = raw.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(f"{raw!r} is not true or false")
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(raw)
    return raw


def query_fields(descriptor: Descriptor, exclude: Iterable[str] = ()) -> list[FieldDescriptor]:
    """The request fields a query string may set: scalars (and repeated scalars), not messages."""
    excluded = set(exclude)
    return [fd for fd in descriptor.fields if fd.type != FieldDescriptor.TYPE_MESSAGE and fd.name not in excluded]


def to_json(message: Message) -> dict[str, Any]:
    body = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return cast(dict[str, Any], whole_numbers(body))


def whole_numbers(value: Any) -> Any:
    """JSON numbers as a client wrote them: google.protobuf.Struct (custom fields, details) carries every
    number as a double, so 50 would come back as 50.0; whole numbers are given back as integers."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    return value


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(
        json.dumps(body, ensure_ascii=False), status=status, content_type="application/json; charset=utf-8"
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
