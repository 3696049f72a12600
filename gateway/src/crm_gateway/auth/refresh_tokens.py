"""Refresh tokens: opaque, stored as SHA-256, rotated on every use, with reuse detection.

Every login starts a family. Using a refresh token marks it rotated and issues its successor in the same
family. Presenting a token that was already rotated means two parties hold it (one of them stole it), so
the whole family is revoked and both must log in again (OAuth 2.0 Security BCP, section 4.14).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from crm_gateway.db import Database
from crm_gateway.models import RefreshToken, utcnow
from crm_kit.db.ids import uuid7

log = logging.getLogger("crm_gateway.auth")

PREFIX = "crmrt_"


class RefreshTokenRejected(Exception):
    """The refresh token is unknown, expired, revoked or was reused."""


@dataclass(frozen=True)
class Rotated:
    user_id: str
    tenant_id: str
    token: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def issue(db: Database, *, user_id: str, tenant_id: str, ttl: timedelta, family_id: str | None = None) -> str:
    token = new_token()
    now = utcnow()
    with db.transaction() as session:
        session.add(
            RefreshToken(
                id=uuid7(),
                token_hash=token_hash(token),
                family_id=family_id or uuid7(),
                user_id=user_id,
                tenant_id=tenant_id,
                created_at=now,
                expires_at=now + ttl,
            )
        )
    return token


def _revoke_family(db: Database, family_id: str) -> None:
    with db.transaction() as session:
        session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )


def rotate(db: Database, token: str, *, ttl: timedelta) -> Rotated:
    """Spend `token` and return its successor; detect reuse. Raises RefreshTokenRejected."""
    if not token.startswith(PREFIX) or len(token) > 200:
        raise RefreshTokenRejected("malformed refresh token")
    now = utcnow()
    reused_family: str | None = None
    with db.transaction() as session:
        row = session.scalar(select(RefreshToken).where(RefreshToken.token_hash == token_hash(token)))
        if row is None or row.revoked_at is not None:
            raise RefreshTokenRejected("refresh token is not valid")
        if row.rotated_at is None and row.expires_at <= now:
            raise RefreshTokenRejected("refresh token expired")
        if row.rotated_at is None:
            # Conditional update: of two concurrent uses of one token exactly one wins.
            result = session.execute(
                update(RefreshToken)
                .where(RefreshToken.id == row.id, RefreshToken.rotated_at.is_(None))
                .values(rotated_at=now)
                .execution_options(synchronize_session=False)
            )
            won = cast(CursorResult[Any], result).rowcount
            if won == 1:
                family_id, user_id, tenant_id = row.family_id, row.user_id, row.tenant_id
            else:
                reused_family = row.family_id
        else:
            reused_family = row.family_id
    if reused_family is not None:
        _revoke_family(db, reused_family)
        log.warning("refresh token reuse detected; family revoked", extra={"family_id": reused_family})
        raise RefreshTokenRejected("refresh token reuse detected")
    successor = issue(db, user_id=user_id, tenant_id=tenant_id, ttl=ttl, family_id=family_id)
    return Rotated(user_id=user_id, tenant_id=tenant_id, token=successor)


def revoke_user(db: Database, user_id: str) -> None:
    with db.transaction() as session:
        session.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
