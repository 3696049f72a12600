"""`crmctl contacts import`: upload a CSV or XLSX file to the customer service of the tenant's cell, follow the
job with a progress bar and print its problems. `crmctl contacts export`: a filtered list as CSV or XLSX.

crmctl runs next to the gateway database: it mints a short-lived access token for the tenant's first
admin with the gateway's own signing key and token code (the service verifies it against the gateway's
JWKS as any other), and calls crm.customer.v1.TransferService over gRPC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from crm.customer.v1 import transfer_pb2, transfer_pb2_grpc
from crm_gateway.auth.keys import KeyStore, ensure_key
from crm_gateway.auth.tokens import TokenService
from crm_gateway.config import Settings
from crm_gateway.db import Database
from crm_gateway.models import Tenant, User
from crm_kit.grpc.channels import open_channel

DONE = ("succeeded", "failed", "completed_with_errors")
SHOWN_PROBLEMS = 50


class TransferError(RuntimeError):
    """A failure to report as the command's error message."""


@dataclass(frozen=True)
class Target:
    tenant: Tenant
    admin: User
    address: str
    token: str


def target(db: Database, settings: Settings, slug: str) -> Target:
    with db.transaction() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
        if tenant is None:
            raise TransferError(f"no tenant {slug!r}")
        users = session.scalars(select(User).where(User.tenant_id == tenant.id).order_by(User.created_at, User.id))
        admin = next((u for u in users if "admin" in (u.roles or []) and u.is_active), None)
    if admin is None:
        raise TransferError(f"tenant {slug!r} has no active admin to act as")
    endpoints = settings.gateway.cell_endpoints().get(tenant.cell)
    if endpoints is None:
        raise TransferError(f"tenant {slug!r} lives in cell {tenant.cell!r}, which GATEWAY_CELLS does not configure")
    if settings.gateway.signing_key_file is None:
        ensure_key(db)
    keys = KeyStore(db, key_file=settings.gateway.signing_key_file, cache_seconds=0)
    tokens = TokenService(
        keys,
        issuer=settings.kit.jwt_issuer,
        audience=settings.kit.jwt_audience,
        ttl_seconds=settings.gateway.access_token_ttl_seconds,
    )
    token = tokens.issue(subject=admin.id, tenant_id=tenant.id, tenant_slug=tenant.slug, roles=list(admin.roles))
    return Target(tenant, admin, endpoints["customer"], token)


def read_mapping(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TransferError(f"cannot read the mapping {path}: {exc}") from None


def run_import(
    t: Target,
    file: Path,
    *,
    dry_run: bool,
    mapping: str,
    match_email: bool,
    console: Console,
    poll_seconds: float = 0.25,
    timeout_seconds: float = 3600,
) -> transfer_pb2.ImportJob:
    content = file.read_bytes()
    metadata = (("authorization", f"Bearer {t.token}"),)
    with open_channel(t.address, large_messages=True) as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        try:
            job = stub.StartImport(
                transfer_pb2.StartImportRequest(
                    content=content, filename=file.name, mapping=mapping, dry_run=dry_run, match_email=match_email
                ),
                metadata=metadata,
                timeout=120,
            )
            job = _follow(stub, job, metadata, console, poll_seconds, timeout_seconds)
        except grpc.RpcError as exc:
            raise TransferError(_rpc_message(exc, t.address)) from None
    return job


def _follow(
    stub: transfer_pb2_grpc.TransferServiceStub,
    job: transfer_pb2.ImportJob,
    metadata: tuple[tuple[str, str], ...],
    console: Console,
    poll_seconds: float,
    timeout_seconds: float,
) -> transfer_pb2.ImportJob:
    label = "checking" if job.dry_run else "importing"
    deadline = time.monotonic() + timeout_seconds
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{label} {job.filename}", total=100)
        while job.status not in DONE:
            if time.monotonic() > deadline:
                raise TransferError(
                    f"the job {job.id} is still {job.status}; follow it with GET /contact-imports/{job.id}"
                )
            time.sleep(poll_seconds)
            job = stub.GetImportJob(transfer_pb2.GetImportJobRequest(id=job.id), metadata=metadata, timeout=30)
            progress.update(task, completed=job.progress_percent)
        progress.update(task, completed=100)
    return job


def _rpc_message(exc: grpc.RpcError, address: str) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"the customer service at {address} is unavailable: {details}"
    return f"{code.name if code else 'error'}: {details}"


def report(job: transfer_pb2.ImportJob, console: Console) -> None:
    verb = "would be " if job.dry_run else ""
    console.print(
        f"[bold]{job.status}[/]: {job.total_rows} rows; {verb}created {job.created}, {verb}updated {job.updated}, "
        f"unchanged {job.unchanged}, failed {job.failed}"
        + (" [dim](dry run: nothing written)[/]" if job.dry_run else "")
    )
    if job.error:
        console.print(f"[red]{job.error}[/]")
    if job.problems:
        table = Table("row", "column", "field", "value", "problem", title=f"{job.problem_count} problem(s)")
        for p in list(job.problems)[:SHOWN_PROBLEMS]:
            table.add_row(str(p.row), p.column, p.field, p.value, p.problem)
        console.print(table)
        if job.problem_count > SHOWN_PROBLEMS:
            console.print(f"the full report: GET /api/v1/contact-imports/{job.id}/report")


def has_problems(job: transfer_pb2.ImportJob) -> bool:
    return job.status != "succeeded" or job.problem_count > 0


def run_export(
    t: Target, request: transfer_pb2.ExportContactsRequest, timeout_seconds: float = 300
) -> transfer_pb2.ExportFile:
    """The file ExportContacts answers for `request` (the filters and order of a contact list)."""
    metadata = (("authorization", f"Bearer {t.token}"),)
    with open_channel(t.address, large_messages=True) as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        try:
            reply: transfer_pb2.ExportFile = stub.ExportContacts(request, metadata=metadata, timeout=timeout_seconds)
        except grpc.RpcError as exc:
            raise TransferError(_rpc_message(exc, t.address)) from None
    return reply
