"""Record-level access by owner.

Admins and managers (`Principal.sees_everything`) see and edit every record of their tenant. Anyone else
(a member, i.e. a sales rep) sees and edits only the records whose owner column holds their subject:

- reading, updating or deleting someone else's record is NOT_FOUND, exactly as for an id that does not
  exist, so nothing leaks about which ids exist;
- lists are filtered in SQL with `visible_to(principal, model)`, so pagination and counts stay right;
- a record created without an owner belongs to its creator; a member may not create a record for, or
  hand a record over to, anyone else (PERMISSION_DENIED naming the owner field).

Code running without a principal (event consumers, jobs, commands) is trusted machinery and is not
restricted; every gRPC call has a principal, set by the auth interceptor from the verified token.

`ResourceStore(..., owner_field="owner_id")` applies all of this. A service that builds its own query on
an owned table must add `visible_to(current_principal(), Model)` to it as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, false, true

from crm_kit.context import Principal, current_principal
from crm_kit.errors import FieldViolation, PermissionDenied

DEFAULT_OWNER_FIELD = "owner_id"


def restricted(principal: Principal | None) -> bool:
    """True when `principal` sees only what it owns (a caller that is neither admin nor manager)."""
    return principal is not None and not principal.sees_everything


def visible_to(principal: Principal | None, model: Any, owner_field: str = DEFAULT_OWNER_FIELD) -> ColumnElement[bool]:
    """The where-clause limiting `model`'s rows to those `principal` may see: always true for admins,
    managers and trusted machinery (no principal), `owner = subject` for everyone else."""
    if not restricted(principal):
        return true()
    assert principal is not None
    if not principal.subject:
        return false()  # a caller with no identity owns nothing (never matches unowned rows)
    column: ColumnElement[Any] = getattr(model, owner_field)
    return column == principal.subject


def can_see(principal: Principal | None, row: Any, owner_field: str = DEFAULT_OWNER_FIELD) -> bool:
    """The same rule as `visible_to`, for a row already loaded."""
    if not restricted(principal):
        return True
    assert principal is not None
    return bool(principal.subject) and getattr(row, owner_field) == principal.subject


def _denied(owner_field: str, description: str) -> PermissionDenied:
    return PermissionDenied(
        f"{owner_field}: {description}", [FieldViolation(owner_field, description)]
    )


@dataclass(frozen=True)
class OwnerAccess:
    """The owner rule for one table; `ResourceStore` calls it on every read and write."""

    owner_field: str = DEFAULT_OWNER_FIELD

    def where(self, model: Any, principal: Principal | None = None) -> ColumnElement[bool]:
        return visible_to(principal or current_principal(), model, self.owner_field)

    def on_create(self, values: dict[str, Any], principal: Principal | None = None) -> None:
        """Default the owner to the caller; refuse a member creating a record for someone else."""
        principal = principal or current_principal()
        if principal is None:
            return
        owner = values.get(self.owner_field) or ""
        if not owner:
            values[self.owner_field] = principal.subject
        elif restricted(principal) and owner != principal.subject:
            raise _denied(self.owner_field, "only an admin or a manager may create a record for another owner")

    def on_update(self, row: Any, values: dict[str, Any], principal: Principal | None = None) -> None:
        """Refuse a member handing a record over to someone else (or leaving it without an owner)."""
        principal = principal or current_principal()
        if self.owner_field not in values or not restricted(principal):
            return
        assert principal is not None
        new_owner = values[self.owner_field]
        if new_owner != principal.subject and new_owner != getattr(row, self.owner_field):
            raise _denied(self.owner_field, "only an admin or a manager may assign a record to another owner")
