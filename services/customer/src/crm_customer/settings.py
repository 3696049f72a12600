"""The tenant's settings of the customer record: title-casing of names, the duplicate policy and the default
phone region. One row per tenant in `customer_settings`; a tenant without a row has the defaults.

Other parts of the service read them with `await get_settings(session)` (inside the tenant's scope), e.g.
duplicate detection reads `duplicate_policy`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Boolean, Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm.customer.v1 import customer_pb2
from crm_customer.models import Base
from crm_kit import validation
from crm_kit.context import ADMIN, current_principal, require_tenant
from crm_kit.db.base import TenantScoped, UtcDateTime, utcnow
from crm_kit.errors import PermissionDenied, StaleVersion, Violations

WARN = "warn"
BLOCK = "block"
DUPLICATE_POLICIES = (WARN, BLOCK)
REGION_ENV = "CUSTOMER_DEFAULT_PHONE_REGION"


def default_region() -> str:
    """The service-wide default of `default_phone_region` (CUSTOMER_DEFAULT_PHONE_REGION, else CN)."""
    return os.environ.get(REGION_ENV, "").strip().upper() or "CN"


class CustomerSettingsRow(Base, TenantScoped):
    __tablename__ = "customer_settings"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title_case_names: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    duplicate_policy: Mapped[str] = mapped_column(String(16), nullable=False, default=WARN)
    default_phone_region: Mapped[str] = mapped_column(String(2), nullable=False, default="CN")
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)


@dataclass(frozen=True)
class CustomerSettings:
    title_case_names: bool = False
    duplicate_policy: str = WARN
    default_phone_region: str = "CN"
    version: int = 0  # 0: never changed (the defaults)
    update_time: datetime | None = None

    def to_message(self) -> customer_pb2.CustomerSettings:
        msg = customer_pb2.CustomerSettings(
            title_case_names=self.title_case_names,
            duplicate_policy=self.duplicate_policy,
            default_phone_region=self.default_phone_region,
            version=self.version,
        )
        if self.update_time is not None:
            msg.update_time.FromDatetime(self.update_time)
        return msg


def defaults() -> CustomerSettings:
    return CustomerSettings(default_phone_region=default_region())


async def get_settings(session: AsyncSession) -> CustomerSettings:
    """The current tenant's settings (the defaults when it never changed them)."""
    row = await session.get(CustomerSettingsRow, require_tenant())
    if row is None:
        return defaults()
    return CustomerSettings(
        title_case_names=row.title_case_names,
        duplicate_policy=row.duplicate_policy,
        default_phone_region=row.default_phone_region,
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
    wanted = replace(current, **changes)  # type: ignore[arg-type]
    if wanted == current:
        return current
    if row is None:
        row = CustomerSettingsRow(tenant_id=tenant, version=0)
        session.add(row)
    row.title_case_names = wanted.title_case_names
    row.duplicate_policy = wanted.duplicate_policy
    row.default_phone_region = wanted.default_phone_region
    row.version = (row.version or 0) + 1
    row.update_time = utcnow()
    await session.flush()
    return await get_settings(session)
