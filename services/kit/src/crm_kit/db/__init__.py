"""Data layer: engine and sessions, the tenant guard, row-level security and migrations."""

from crm_kit.db.base import Resource, SystemBase, TenantScoped, make_base, utcnow
from crm_kit.db.engine import Database
from crm_kit.db.ids import uuid7

__all__ = ["Database", "Resource", "SystemBase", "TenantScoped", "make_base", "utcnow", "uuid7"]
