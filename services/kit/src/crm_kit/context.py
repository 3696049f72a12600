"""Request-scoped identity: who is calling and for which tenant.

The gRPC auth interceptor sets these from the verified token; event consumers set the tenant from the event.
Everything tenant-aware (the ORM guard, row-level security, the outbox) reads them from here, so a tenant
can never be passed around by hand and forgotten.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

ADMIN = "admin"
MANAGER = "manager"
MEMBER = "member"


@dataclass(frozen=True)
class Principal:
    subject: str
    tenant_id: str
    tenant_slug: str = ""
    roles: tuple[str, ...] = ()
    token: str = field(default="", repr=False)

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    @property
    def sees_everything(self) -> bool:
        """Admins and managers see every record of their tenant; others only what they own."""
        return self.has_role(ADMIN, MANAGER)


_tenant: ContextVar[str | None] = ContextVar("crm_tenant_id", default=None)
_system: ContextVar[bool] = ContextVar("crm_system_scope", default=False)
_principal: ContextVar[Principal | None] = ContextVar("crm_principal", default=None)
_actor: ContextVar[str | None] = ContextVar("crm_actor", default=None)


class NoTenantError(RuntimeError):
    """A tenant-scoped operation ran with no tenant in context: the guard fails closed."""


def current_tenant() -> str | None:
    return _tenant.get()


def require_tenant() -> str:
    tenant = _tenant.get()
    if not tenant:
        raise NoTenantError("no tenant in context")
    return tenant


def current_principal() -> Principal | None:
    return _principal.get()


@contextmanager
def tenant_scope(tenant_id: str, principal: Principal | None = None) -> Iterator[None]:
    if not tenant_id:
        raise NoTenantError("empty tenant id")
    t = _tenant.set(tenant_id)
    p = _principal.set(principal)
    try:
        yield
    finally:
        _principal.reset(p)
        _tenant.reset(t)


def current_actor() -> str | None:
    """Who acts when no principal does: e.g. "system:<consumer>" inside an event consumer (the audit log's
    actor for changes made by machinery rather than by a caller)."""
    return _actor.get()


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def in_system_scope() -> bool:
    return _system.get()


@contextmanager
def system_scope() -> Iterator[None]:
    """Kit machinery that must see every tenant's rows of the kit's own tables (the outbox relay, the
    dead-letter store). On PostgreSQL it sets app.system for the transaction; tenant tables stay closed."""
    token = _system.set(True)
    try:
        yield
    finally:
        _system.reset(token)
