"""Domain errors and their one mapping to canonical gRPC codes with google.rpc details.

Service code raises these; the gRPC error interceptor turns them into statuses. The gateway turns statuses
back into problem+json. Nothing else maps errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class CrmError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.violations = list(violations or [])

    def to_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.violations:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in self.violations
                    ]
                )
            )
            status.details.append(detail)
        return status


class InvalidArgument(CrmError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str = "") -> None:
        vs = [violations] if isinstance(violations, FieldViolation) else violations
        super().__init__(message or "; ".join(f"{v.field}: {v.description}" for v in vs), vs)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(FieldViolation(field, description))


class NotFound(CrmError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, resource: str, id_: str) -> None:
        super().__init__(f"{resource} {id_!r} not found")


class AlreadyExists(CrmError):
    code = grpc.StatusCode.ALREADY_EXISTS


class StaleVersion(CrmError):
    """Optimistic concurrency: the caller edited an older version."""

    code = grpc.StatusCode.ABORTED

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(
            f"version {expected} is stale; the current version is {actual}",
            [FieldViolation("version", f"stale: current version is {actual}, got {expected}")],
        )


class FailedPrecondition(CrmError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(CrmError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(CrmError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Violations:
    """Collects every problem with an input before failing, so a caller can fix them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def status_code_name(code: int) -> str:
    return code_pb2.Code.Name(code)
