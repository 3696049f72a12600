"""The tenant guard: every ORM statement on a TenantScoped entity is filtered by the current tenant, and
every new row is stamped with it. On PostgreSQL each transaction also sets app.tenant_id for row-level
security, so a query that escapes the ORM is still confined."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql.util import find_tables

from crm_kit.context import NoTenantError, current_tenant, in_system_scope
from crm_kit.db.base import SystemBase, TenantScoped

_installed: set[type[Session]] = set()


def _filter_by_tenant(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return  # the parent query was already filtered
    if not _touches_tenant_data(state):
        return
    tenant = current_tenant()
    if not tenant:
        raise NoTenantError("tenant-scoped query with no tenant in context")
    state.statement = state.statement.options(
        with_loader_criteria(TenantScoped, lambda cls: cls.tenant_id == tenant, include_aliases=True)
    )


def _touches_tenant_data(state: ORMExecuteState) -> bool:
    if any(issubclass(mapper.class_, TenantScoped) for mapper in state.all_mappers):
        return True
    # Column-only statements such as select(func.count()).select_from(Model) name no mapper.
    stmt: Any = state.statement
    froms = stmt.get_final_froms() if hasattr(stmt, "get_final_froms") else []
    return any(
        "tenant_id" in table.c and getattr(table, "metadata", None) is not SystemBase.metadata
        for f in froms
        for table in find_tables(f, include_joins=True, include_aliases=True)
    )


def _stamp_new_rows(session: Session, flush_context: Any, instances: Any) -> None:
    for obj in session.new:
        if not isinstance(obj, TenantScoped):
            continue
        tenant = current_tenant()
        if not tenant:
            raise NoTenantError(f"inserting {type(obj).__name__} with no tenant in context")
        if obj.tenant_id is None:
            obj.tenant_id = tenant
        elif obj.tenant_id != tenant:
            raise NoTenantError(f"inserting {type(obj).__name__} for another tenant")
    for obj in session.dirty:
        if isinstance(obj, TenantScoped) and obj.tenant_id != current_tenant():
            raise NoTenantError(f"changing {type(obj).__name__} of another tenant")


def _set_rls_tenant(session: Session, transaction: Any, connection: Any) -> None:
    if connection.dialect.name != "postgresql":
        return
    tenant = current_tenant() or ""
    connection.execute(
        text("SELECT set_config('app.tenant_id', :tid, true), set_config('app.system', :sys, true)"),
        {"tid": tenant, "sys": "on" if in_system_scope() else "off"},
    )


def install(session_class: type[Session]) -> None:
    if session_class in _installed:
        return
    event.listen(session_class, "do_orm_execute", _filter_by_tenant)
    event.listen(session_class, "before_flush", _stamp_new_rows)
    event.listen(session_class, "after_begin", _set_rls_tenant)
    _installed.add(session_class)
