"""The tenant's settings of the customer record: title-casing of names, the duplicate policy and threshold,
the default phone region and how long a merge can be undone. One row per tenant in `customer_settings`; a
tenant without a row has the defaults.

Other parts of the service read them with `await get_settings(session)` (inside the tenant's scope), e.g.
duplicate detection reads `duplicate_policy` and `duplicate_threshold`, a merge `merge_retention_days`.

`duplicate_threshold` and `merge_retention_days` are stored only once the tenant sets them (NULL until
then): a tenant that never did follows the service-wide defaults, CUSTOMER_DUPLICATE_THRESHOLD and
CUSTOMER_MERGE_RETENTION_DAYS, even when they change later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Boolean, Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm.customer.v1 import customer_pb2
from crm_customer.matching import DEFAULT_THRESHOLD
from crm_customer.models import Base
from crm_kit import validation
from crm_kit.context import ADMIN, current_principal, require_tenant
from crm_kit.db.base import TenantScoped, UtcDateTime, utcnow
from crm_kit.errors import PermissionDenied, StaleVersion, Violations

WARN = "warn"
BLOCK = "block"
DUPLICATE_POLICIES = (WARN, BLOCK)
REGION_ENV = "CUSTOMER_DEFAULT_PHONE_REGION"
DEFAULT_RETENTION_DAYS = 30


def default_region() -> str:
    """The service-wide default of `default_phone_region` (CUSTOMER_DEFAULT_PHONE_REGION, else CN)."""
    return os.environ.get(REGION_ENV, "").strip().upper() or "CN"


@dataclass(frozen=True)
class Defaulted:
    """A setting stored only once the tenant sets it: NULL follows the service-wide default, read from the
    environment at each use (a malformed or out-of-range value there gives the built-in one)."""

    env: str
    low: int
    high: int
    builtin: int

    def service_default(self) -> int:
        raw = os.environ.get(self.env, "").strip()
        return int(raw) if raw.isdigit() and self.low <= int(raw) <= self.high else self.builtin


DEFAULTED = {
    "duplicate_threshold": Defaulted("CUSTOMER_DUPLICATE_THRESHOLD", 1, 100, DEFAULT_THRESHOLD),
    "merge_retention_days": Defaulted("CUSTOMER_MERGE_RETENTION_DAYS", 1, 3650, DEFAULT_RETENTION_DAYS),
}


class CustomerSettingsRow(Base, TenantScoped):
    __tablename__ = "customer_settings"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title_case_names: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    duplicate_policy: Mapped[str] = mapped_column(String(16), nullable=False, default=WARN)
    default_phone_region: Mapped[str] = mapped_column(String(2), nullable=False, default="CN")
    # NULL: the service-wide default (never set by the tenant).
    duplicate_threshold: Mapped[int | None] = mapped_column(Integer, nullable=True)
    merge_retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)


@dataclass(frozen=True)
class CustomerSettings:
    title_case_names: bool = False
    duplicate_policy: str = WARN
    default_phone_region: str = "CN"
    duplicate_threshold: int = DEFAULT_THRESHOLD
    merge_retention_days: int = DEFAULT_RETENTION_DAYS
    version: int = 0  # 0: never changed (the defaults)
    update_time: datetime | None = None

    def to_message(self) -> customer_pb2.CustomerSettings:
        msg = customer_pb2.CustomerSettings(
            title_case_names=self.title_case_names,
            duplicate_policy=self.duplicate_policy,
            default_phone_region=self.default_phone_region,
            duplicate_threshold=self.duplicate_threshold,
            merge_retention_days=self.merge_retention_days,
            version=self.version,
        )
        if self.update_time is not None:
            msg.update_time.FromDatetime(self.update_time)
        return msg

    @property
    def merge_retention(self) -> timedelta:
        return timedelta(days=self.merge_retention_days)


def defaults() -> CustomerSettings:
    return CustomerSettings(
        default_phone_region=default_region(),
        duplicate_threshold=_effective(None, "duplicate_threshold"),
        merge_retention_days=_effective(None, "merge_retention_days"),
    )


def _effective(row: CustomerSettingsRow | None, field: str) -> int:
    """A defaulted setting: the tenant's own, else the service-wide default."""
    value: int | None = getattr(row, field, None)
    return value or DEFAULTED[field].service_default()


async def get_settings(session: AsyncSession) -> CustomerSettings:
    """The current tenant's settings (the defaults when it never changed them)."""
    row = await session.get(CustomerSettingsRow, require_tenant())
    if row is None:
        return defaults()
    return CustomerSettings(
        title_case_names=row.title_case_names,
        duplicate_policy=row.duplicate_policy,
        default_phone_region=row.default_phone_region,
        duplicate_threshold=_effective(row, "duplicate_threshold"),
        merge_retention_days=_effective(row, "merge_retention_days"),
        version=row.version,
        update_time=row.update_time,
    )


def require_admin() -> None:
    principal = current_principal()
    if principal is not None and not principal.has_role(ADMIN):
        raise PermissionDenied("only an admin may read or change the customer settings")


def _changes(request: customer_pb2.UpdateCustomerSettingsRequest) -> dict[str, object]:
    from crm_customer.contact_points import COUNTRIES

    v = Violations()
    out: dict[str, object] = {}
    if request.HasField("title_case_names"):
        out["title_case_names"] = request.title_case_names
    if request.HasField("duplicate_policy"):
        out["duplicate_policy"] = validation.one_of(
            v, "duplicate_policy", request.duplicate_policy, DUPLICATE_POLICIES, default=WARN
        )
    if request.HasField("default_phone_region"):
        region = request.default_phone_region.strip().upper() or default_region()
        if region not in COUNTRIES:
            v.add("default_phone_region", "must be an ISO 3166-1 alpha-2 region code such as CN or US")
        out["default_phone_region"] = region
    for field, d in DEFAULTED.items():
        if request.HasField(field):
            value = getattr(request, field)
            if value == 0:
                out[field] = None  # back to the service-wide default, and following it again
            elif not d.low <= value <= d.high:
                v.add(field, f"must be between {d.low} and {d.high}, or 0 for the service-wide default")
            else:
                out[field] = value
    v.raise_if_any()
    return out


async def update_settings(
    session: AsyncSession, request: customer_pb2.UpdateCustomerSettingsRequest
) -> CustomerSettings:
    """Apply the settings `request` gives; the version increases when something changed."""
    changes = _changes(request)
    tenant = require_tenant()
    stmt = select(CustomerSettingsRow).where(CustomerSettingsRow.tenant_id == tenant).with_for_update()
    row = (await session.execute(stmt)).scalar_one_or_none()
    current = await get_settings(session) if row is not None else defaults()
    if request.version and request.version != current.version:
        raise StaleVersion(request.version, current.version)
    effective = {f: DEFAULTED[f].service_default() if value is None else value for f, value in changes.items()}
    wanted = replace(current, **effective)  # type: ignore[arg-type]
    # Setting a defaulted value to what it is now still pins it (it no longer follows the service default),
    # and resetting one unpins it: both change the row even when the effective value stays.
    pinned = [f for f in DEFAULTED if f in changes and getattr(row, f, None) != changes[f]]
    if wanted == current and not pinned:
        return current
    if row is None:
        row = CustomerSettingsRow(tenant_id=tenant, version=0)
        session.add(row)
    row.title_case_names = wanted.title_case_names
    row.duplicate_policy = wanted.duplicate_policy
    row.default_phone_region = wanted.default_phone_region
    for field in DEFAULTED:
        if field in changes:
            setattr(row, field, changes[field])
    row.version = (row.version or 0) + 1
    row.update_time = utcnow()
    await session.flush()
    return await get_settings(session)
