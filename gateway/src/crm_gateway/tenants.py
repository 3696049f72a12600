"""Tenants and their people: creation with validation, lookups. Used by crmctl and the admin API."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from crm_gateway.auth.passwords import WeakPassword, check_policy, hash_password
from crm_gateway.db import Database
from crm_gateway.models import ROLES, Tenant, User, utcnow
from crm_kit.db.ids import uuid7

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Deliberately simple: one @, no spaces, a dot in the domain. Deliverability is not our business here.
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]{2,}$")
RESERVED_SLUGS = frozenset({"api", "admin", "www", "system"})


class DirectoryError(ValueError):
    """Invalid input; `field` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Conflict(DirectoryError):
    """The slug or email is already taken."""


@dataclass(frozen=True)
class CreatedTenant:
    tenant: Tenant
    admin: User


def validate_slug(slug: str) -> str:
    if not SLUG.match(slug) or "--" in slug:
        raise DirectoryError(
            "slug",
            f"invalid slug {slug!r}: use 1-63 lower-case letters, digits and single hyphens, "
            "starting and ending with a letter or digit",
        )
    if slug in RESERVED_SLUGS:
        raise DirectoryError("slug", f"slug {slug!r} is reserved")
    return slug


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 320 or not EMAIL.match(email):
        raise DirectoryError("email", f"invalid email address {email!r}")
    return email


def validate_password(password: str) -> str:
    try:
        check_policy(password)
    except WeakPassword as exc:
        raise DirectoryError("password", str(exc)) from None
    return password


def validate_roles(roles: Sequence[str]) -> list[str]:
    if not roles:
        raise DirectoryError("roles", f"at least one role is required ({', '.join(ROLES)})")
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise DirectoryError("roles", f"unknown roles {bad}; use {', '.join(ROLES)}")
    return list(dict.fromkeys(roles))


def create_tenant(
    db: Database, *, slug: str, name: str | None, admin_email: str, admin_password: str, cell: str = "default"
) -> CreatedTenant:
    slug = validate_slug(slug)
    email = normalize_email(admin_email)
    validate_password(admin_password)
    now = utcnow()
    tenant = Tenant(id=uuid7(), slug=slug, name=(name or slug).strip() or slug, cell=cell, created_at=now)
    admin = User(
        id=uuid7(),
        tenant_id=tenant.id,
        email=email,
        password_hash=hash_password(admin_password),
        roles=["admin"],
        is_active=True,
        created_at=now,
    )
    try:
        with db.transaction() as session:
            if session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
                raise Conflict("slug", f"a tenant with slug {slug!r} already exists")
            session.add(tenant)
            session.flush()
            session.add(admin)
    except IntegrityError:
        raise Conflict("slug", f"a tenant with slug {slug!r} already exists") from None
    return CreatedTenant(tenant=tenant, admin=admin)


def list_tenants(db: Database) -> list[tuple[Tenant, int]]:
    with db.transaction() as session:
        users = select(User.tenant_id, func.count(User.id).label("n")).group_by(User.tenant_id).subquery()
        rows = session.execute(
            select(Tenant, func.coalesce(users.c.n, 0))
            .outerjoin(users, users.c.tenant_id == Tenant.id)
            .order_by(Tenant.slug)
        ).all()
        return [(tenant, int(count)) for tenant, count in rows]


def find_tenant(db: Database, *, slug: str | None = None, tenant_id: str | None = None) -> Tenant | None:
    with db.transaction() as session:
        if tenant_id is not None:
            return session.get(Tenant, tenant_id)
        return session.scalar(select(Tenant).where(Tenant.slug == slug))


def create_user(db: Database, *, tenant_id: str, email: str, password: str, roles: Sequence[str]) -> User:
    email = normalize_email(email)
    validate_password(password)
    user = User(
        id=uuid7(),
        tenant_id=tenant_id,
        email=email,
        password_hash=hash_password(password),
        roles=validate_roles(roles),
        is_active=True,
        created_at=utcnow(),
    )
    try:
        with db.transaction() as session:
            taken = session.scalar(select(User.id).where(User.tenant_id == tenant_id, User.email == email))
            if taken is not None:
                raise Conflict("email", f"a user with email {email!r} already exists in this tenant")
            session.add(user)
    except IntegrityError:
        raise Conflict("email", f"a user with email {email!r} already exists in this tenant") from None
    return user


def get_user(db: Database, *, tenant_id: str, user_id: str) -> User | None:
    with db.transaction() as session:
        return session.scalar(select(User).where(User.tenant_id == tenant_id, User.id == user_id))


def list_users(db: Database, *, tenant_id: str, limit: int, after: str | None) -> list[User]:
    """Keyset pagination on the (time-ordered) id."""
    with db.transaction() as session:
        query = select(User).where(User.tenant_id == tenant_id).order_by(User.id).limit(limit)
        if after:
            query = query.where(User.id > after)
        return list(session.scalars(query))
