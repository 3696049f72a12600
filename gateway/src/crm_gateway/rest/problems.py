"""RFC 9457 problem details: the one error format of every HTTP response the gateway produces.

Handlers are registered for Problem, for every werkzeug HTTPException and, as a catch-all, for any other
exception, so no route can answer with an HTML page or a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

log = logging.getLogger("crm_gateway.errors")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:crm:problem:"


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


@dataclass(eq=False)
class Problem(Exception):
    """Raise anywhere in a request to answer with a problem+json document."""

    status: int
    detail: str = ""
    title: str = ""
    type: str = ""
    errors: Sequence[FieldError] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail or self.title)

    def body(self) -> dict[str, Any]:
        phrase = _phrase(self.status)
        doc: dict[str, Any] = {
            "type": self.type or "about:blank",
            "title": self.title or phrase,
            "status": self.status,
            "detail": self.detail or self.title or phrase,
            "instance": _instance(),
        }
        if self.errors:
            doc["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        doc.update(self.extra)
        return doc


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _instance() -> str:
    try:
        return request.path
    except RuntimeError:  # outside a request
        return ""


def problem_type(slug: str) -> str:
    return TYPE_PREFIX + slug


def validation_problem(errors: Sequence[FieldError], detail: str = "") -> Problem:
    return Problem(
        400,
        detail=detail or "; ".join(f"{e.field}: {e.message}" for e in errors) or "invalid request",
        title="Invalid request",
        type=problem_type("validation"),
        errors=errors,
    )


def unauthenticated(detail: str, *, invalid_token: bool = True) -> Problem:
    """401 with the RFC 6750 challenge (no error code when no token was sent at all)."""
    challenge = 'Bearer realm="crm"' + (', error="invalid_token"' if invalid_token else "")
    return Problem(401, detail=detail, type=problem_type("unauthenticated"), headers={"WWW-Authenticate": challenge})


def problem_response(problem: Problem) -> Response:
    doc = problem.body()
    trace_id = getattr(g, "trace_id", None) if _in_app() else None
    if trace_id and "trace_id" not in doc:
        doc["trace_id"] = trace_id
    response = Response(json.dumps(doc, ensure_ascii=False), status=problem.status, content_type=PROBLEM_JSON)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def _in_app() -> bool:
    try:
        return bool(request)
    except RuntimeError:
        return False


_HTTP_TYPES = {
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


def _http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers: dict[str, str] = {}
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    detail = exc.description or ""
    if status == 413:
        detail = f"the request body is larger than {_size(_body_limit())}"
    slug = _HTTP_TYPES.get(status)
    return problem_response(Problem(status, detail=detail, type=problem_type(slug) if slug else "", headers=headers))


def _body_limit() -> int | None:
    try:
        return request.max_content_length
    except RuntimeError:  # outside a request
        return None


def _size(limit: int | None) -> str:
    if limit is None:
        return "the limit"
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_exception(exc)
    if isinstance(exc, Problem):
        return problem_response(exc)
    trace_id = getattr(g, "trace_id", "")
    log.exception("unhandled error", extra={"trace_id": trace_id, "path": request.path, "method": request.method})
    return problem_response(
        Problem(
            500,
            detail=f"an unexpected error occurred; quote trace id {trace_id} when reporting it",
            type=problem_type("internal"),
        )
    )


def register(app: Flask) -> None:
    app.register_error_handler(Problem, problem_response)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)
