"""Duplicate detection: the match-key index, candidates of one contact, and the batch dedupe job.

- `contact_match_keys` holds each contact's match keys (crm_customer.matching): mapper events keep it in
  step inside every ORM flush that writes a contact (create, update, merge, erase, delete), and
  `crm_customer.bulk` writes the rows of a bulk insert itself (`key_rows`).
- `find_candidates` looks a contact's keys up by equality (the table's primary key starts with
  tenant, kind, value), loads those contacts and scores them: no scan of the tenant.
- The dedupe job (`run_job`, an asyncio task of the service process; state in `dedupe_jobs`, results in
  `duplicate_pairs`) reads the tenant's keys once in key order and pairs contacts only inside a key's
  block, so the work grows with the number of contacts sharing a key, not with the square of the
  tenant's size. Blocks above MAX_BLOCK members (a switchboard number, a generic address) are skipped and
  counted in the job.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Index,
    Integer,
    String,
    Text,
    and_,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Mapper, attributes, mapped_column

import crm_kit.pagination as pagination
from crm.customer.v1 import customer_pb2, dedupe_pb2
from crm_customer import matching
from crm_customer.matching import Match, Profile
from crm_customer.models import Base, Contact
from crm_kit.context import acting_as, tenant_scope
from crm_kit.db import Database, TenantScoped, utcnow, uuid7
from crm_kit.db.base import UtcDateTime
from crm_kit.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound, Violations
from crm_kit.liveness import INTERRUPTED, heartbeat, is_stale

log = logging.getLogger(__name__)

KEY_FIELDS = ("first_name", "last_name", "email", "phone", "emails", "phones")
MAX_LOOKUP = 500  # contacts loaded per key group when looking for one contact's candidates
MAX_BLOCK = int(os.environ.get("CUSTOMER_DEDUPE_MAX_BLOCK", "") or 200)
JOB_MIN_SCORE = 50
PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
ACTOR = "system:dedupe"
_CHUNK = 500


class MatchKey(Base, TenantScoped):
    __tablename__ = "contact_match_keys"
    __table_args__ = (Index("ix_contact_match_keys_tenant_id_contact_id", "tenant_id", "contact_id"),)

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    value: Mapped[str] = mapped_column(String(matching.MAX_KEY), primary_key=True)
    contact_id: Mapped[str] = mapped_column(String(36), primary_key=True)


class DedupeJobRow(Base, TenantScoped):
    __tablename__ = "dedupe_jobs"
    __table_args__ = (Index("ix_dedupe_jobs_tenant_id_create_time", "tenant_id", "create_time"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=uuid7)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=PENDING)
    min_score: Mapped[int] = mapped_column(Integer, nullable=False)
    progress_percent: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    contacts_total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    candidate_pairs: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    pairs_scored: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    pairs_found: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    blocks_skipped: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_by: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)
    start_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    finish_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    heartbeat_time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utcnow)
    duration_ms: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class DuplicatePairRow(Base, TenantScoped):
    __tablename__ = "duplicate_pairs"
    __table_args__ = (
        Index("ix_duplicate_pairs_tenant_id_job_id_score_id", "tenant_id", "job_id", "score", "id"),
        Index("ix_duplicate_pairs_tenant_id_first_id", "tenant_id", "first_id"),
        Index("ix_duplicate_pairs_tenant_id_second_id", "tenant_id", "second_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=uuid7)
    job_id: Mapped[str] = mapped_column(String(36), nullable=False)
    first_id: Mapped[str] = mapped_column(String(36), nullable=False)
    second_id: Mapped[str] = mapped_column(String(36), nullable=False)
    score: Mapped[int] = mapped_column(Integer, nullable=False)
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)


# --- the match-key index ------------------------------------------------------------------------------


def key_rows(tenant_id: str, contact_id: str, values: Any) -> list[dict[str, str]]:
    """The `contact_match_keys` rows of a contact given its column values (a mapping or a row)."""
    data = values if isinstance(values, dict) else matching.row_values(values)
    keys = matching.match_keys(matching.profile(data, contact_id))
    return [{"tenant_id": tenant_id, "kind": k, "value": v, "contact_id": contact_id} for k, v in sorted(keys)]


def _keys_table() -> Any:
    return MatchKey.__table__


def _write_keys(connection: Connection, target: Contact, *, replace: bool) -> None:
    table = _keys_table()
    if replace:
        connection.execute(delete(table).where(table.c.tenant_id == target.tenant_id, table.c.contact_id == target.id))
    rows = key_rows(target.tenant_id, target.id, target)
    if rows:
        connection.execute(insert(table), rows)


def _changed(target: Any) -> bool:
    state = attributes.instance_state(target)
    return any(state.attrs[name].history.has_changes() for name in KEY_FIELDS)


@event.listens_for(Contact, "after_insert")
def _after_insert(mapper: Mapper[Any], connection: Connection, target: Contact) -> None:
    _write_keys(connection, target, replace=False)


@event.listens_for(Contact, "after_update")
def _after_update(mapper: Mapper[Any], connection: Connection, target: Contact) -> None:
    if _changed(target):
        _write_keys(connection, target, replace=True)


@event.listens_for(Contact, "after_delete")
def _after_delete(mapper: Mapper[Any], connection: Connection, target: Contact) -> None:
    table = _keys_table()
    connection.execute(delete(table).where(table.c.tenant_id == target.tenant_id, table.c.contact_id == target.id))


# --- candidates of one contact ------------------------------------------------------------------------

PROFILE_COLUMNS = (
    Contact.id,
    Contact.first_name,
    Contact.last_name,
    Contact.email,
    Contact.phone,
    Contact.emails,
    Contact.phones,
    Contact.account_id,
)


async def load_profiles(
    session: AsyncSession, ids: Iterable[str], where: Sequence[ColumnElement[bool]] = ()
) -> dict[str, Profile]:
    unique = sorted(set(ids))
    out: dict[str, Profile] = {}
    for start in range(0, len(unique), _CHUNK):
        stmt = select(*PROFILE_COLUMNS).where(Contact.id.in_(unique[start : start + _CHUNK]), *where)
        for row in (await session.execute(stmt)).mappings():
            out[row["id"]] = matching.profile(dict(row))
    return out


async def _ids_with_keys(session: AsyncSession, keys: Iterable[tuple[str, str]], exclude: str) -> list[str]:
    keys = list(keys)
    if not keys:
        return []
    clause = or_(*(and_(MatchKey.kind == k, MatchKey.value == v) for k, v in keys))
    stmt = select(MatchKey.contact_id).where(clause).distinct().limit(MAX_LOOKUP)
    if exclude:
        stmt = stmt.where(MatchKey.contact_id != exclude)
    return list((await session.execute(stmt)).scalars())


async def find_candidates(
    session: AsyncSession,
    target: Profile,
    *,
    min_score: int,
    where: Sequence[ColumnElement[bool]] = (),
    limit: int = 20,
) -> list[tuple[Profile, Match]]:
    """Contacts of the tenant (restricted by `where`) scoring at least `min_score` against `target`, best
    first. Strong keys (email, phone, exact name) and the name blocking key are looked up separately so a
    crowded block never hides an exact match."""
    keys = matching.match_keys(target)
    strong = [k for k in keys if k[0] != matching.BLOCK]
    weak = [k for k in keys if k[0] == matching.BLOCK]
    ids = set(await _ids_with_keys(session, strong, target.id))
    ids |= set(await _ids_with_keys(session, weak, target.id))
    ids.discard(target.id)
    profiles = await load_profiles(session, ids, where)
    scored = [(p, matching.score(target, p)) for p in profiles.values()]
    return matching.best_first([(p, m) for p, m in scored if m.score >= min_score])[:limit]


def reason_message(reason: matching.Reason | dict[str, Any]) -> customer_pb2.MatchReason:
    if isinstance(reason, dict):
        return customer_pb2.MatchReason(
            rule=str(reason.get("rule", "")), detail=str(reason.get("detail", "")), points=int(reason.get("points", 0))
        )
    return customer_pb2.MatchReason(rule=reason.rule, detail=reason.detail, points=reason.points)


def candidate_message(p: Profile, m: Match) -> customer_pb2.DuplicateCandidate:
    return customer_pb2.DuplicateCandidate(
        contact_id=p.id, display_name=p.display_name, score=m.score, reasons=[reason_message(r) for r in m.reasons]
    )


def reasons_json(m: Match) -> list[dict[str, Any]]:
    return [{"rule": r.rule, "detail": r.detail, "points": r.points} for r in m.reasons]


def score_arg(v: Violations, field: str, value: int, default: int) -> int:
    if value == 0:
        return default
    if not 1 <= value <= 100:
        v.add(field, "must be between 1 and 100")
    return value


# --- the batch job ------------------------------------------------------------------------------------


def job_message(row: DedupeJobRow) -> dedupe_pb2.DedupeJob:
    msg = dedupe_pb2.DedupeJob(
        id=row.id,
        status=row.status,
        min_score=row.min_score,
        progress_percent=row.progress_percent,
        contacts_total=row.contacts_total,
        candidate_pairs=row.candidate_pairs,
        pairs_scored=row.pairs_scored,
        pairs_found=row.pairs_found,
        blocks_skipped=row.blocks_skipped,
        error=row.error,
        created_by=row.created_by,
        duration_ms=row.duration_ms,
    )
    msg.create_time.FromDatetime(row.create_time)
    if row.start_time is not None:
        msg.start_time.FromDatetime(row.start_time)
    if row.finish_time is not None:
        msg.finish_time.FromDatetime(row.finish_time)
    return msg


async def get_job(session: AsyncSession, job_id: str) -> DedupeJobRow:
    row = await session.get(DedupeJobRow, job_id) if job_id else None
    if row is None:
        raise NotFound("dedupe job", job_id)
    if row.status in (PENDING, RUNNING) and is_stale(row.heartbeat_time):
        row.status, row.error, row.finish_time = FAILED, INTERRUPTED, utcnow()
        await session.flush()
    return row


async def _update_job(db: Database, job_id: str, **values: Any) -> None:
    async with db.transaction() as session:
        row = await session.get(DedupeJobRow, job_id)
        if row is None:
            raise NotFound("dedupe job", job_id)
        for key, value in values.items():
            setattr(row, key, value)
        row.heartbeat_time = utcnow()


async def _candidate_pairs(db: Database) -> tuple[set[tuple[str, str]], int]:
    """Every pair of contacts sharing a match key (blocks up to MAX_BLOCK members), and the number of
    blocks skipped as too large. The database groups the tenant's keys (one pass); only the members of
    shared keys come back."""
    pairs: set[tuple[str, str]] = set()
    key = (MatchKey.kind, MatchKey.value)
    async with db.transaction() as session:
        too_big = select(*key).group_by(*key).having(func.count() > MAX_BLOCK).subquery()
        skipped = int(await session.scalar(select(func.count()).select_from(too_big)) or 0)
        shared = select(*key).group_by(*key).having(func.count() > 1, func.count() <= MAX_BLOCK).subquery()
        stmt = (
            select(MatchKey.kind, MatchKey.value, MatchKey.contact_id)
            .join(shared, and_(MatchKey.kind == shared.c.kind, MatchKey.value == shared.c.value))
            .order_by(MatchKey.kind, MatchKey.value)
        )
        block: list[Any] = []
        current: tuple[Any, Any] | None = None
        for kind, value, contact_id in [*(await session.execute(stmt)).all(), (None, None, None)]:
            if (kind, value) != current:
                members = sorted(block)
                for i, a in enumerate(members):
                    pairs.update((a, b) for b in members[i + 1 :])
                current, block = (kind, value), []
            block.append(contact_id)
    return pairs, skipped


async def _beat(db: Database, job_id: str) -> None:
    async with db.transaction() as session:
        await session.execute(
            update(DedupeJobRow)
            .where(DedupeJobRow.id == job_id, DedupeJobRow.status.in_((PENDING, RUNNING)))
            .values(heartbeat_time=utcnow())
            .execution_options(synchronize_session=False)
        )


async def run_job(db: Database, tenant_id: str, job_id: str) -> None:
    """Run the dedupe job `job_id` of the tenant (the task StartDedupeJob starts)."""
    with tenant_scope(tenant_id), acting_as(ACTOR):
        async with heartbeat(functools.partial(_beat, db, job_id)):
            await _run_job(db, tenant_id, job_id)


async def _run_job(db: Database, tenant_id: str, job_id: str) -> None:
    started = time.perf_counter()
    try:
        async with db.transaction() as session:
            total = int(await session.scalar(select(func.count()).select_from(Contact)) or 0)
            job = await session.get(DedupeJobRow, job_id)
            if job is None:
                return
            min_score = job.min_score
            job.status, job.start_time, job.contacts_total = RUNNING, utcnow(), total
            job.heartbeat_time = utcnow()
        pairs, skipped = await _candidate_pairs(db)
        log.info("dedupe job %s: blocking took %.2f s", job_id, time.perf_counter() - started)
        await _update_job(db, job_id, candidate_pairs=len(pairs), blocks_skipped=skipped, progress_percent=20)
        async with db.transaction() as session:
            profiles = await load_profiles(session, {c for pair in pairs for c in pair})
        await _update_job(db, job_id, progress_percent=30)
        log.info("dedupe job %s: profiles loaded after %.2f s", job_id, time.perf_counter() - started)
        ordered = sorted(pairs)
        found = scored = 0
        step = 5000
        for start in range(0, len(ordered), step):
            rows: list[dict[str, Any]] = []
            for a_id, b_id in ordered[start : start + step]:
                a, b = profiles.get(a_id), profiles.get(b_id)
                if a is None or b is None:  # deleted meanwhile
                    continue
                m = matching.score(a, b)
                if m.score >= min_score:
                    rows.append(
                        {
                            "id": uuid7(),
                            "tenant_id": tenant_id,
                            "job_id": job_id,
                            "first_id": a_id,
                            "second_id": b_id,
                            "score": m.score,
                            "reasons": reasons_json(m),
                        }
                    )
            scored += min(step, len(ordered) - start)
            found += len(rows)
            async with db.transaction() as session:
                if rows:
                    await session.execute(insert(DuplicatePairRow.__table__), rows)
                job = await session.get(DedupeJobRow, job_id)
                if job is not None:
                    job.pairs_scored, job.pairs_found = scored, found
                    job.progress_percent = 30 + (69 * scored) // max(len(ordered), 1)
                    job.heartbeat_time = utcnow()
            await asyncio.sleep(0)
        await _update_job(
            db,
            job_id,
            status=SUCCEEDED,
            progress_percent=100,
            pairs_scored=scored,
            pairs_found=found,
            finish_time=utcnow(),
            duration_ms=int((time.perf_counter() - started) * 1000),
        )
        log.info("dedupe job %s: %d contacts, %d candidate pairs, %d found", job_id, total, len(pairs), found)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the job reports its failure; the service keeps running
        log.exception("dedupe job %s failed", job_id)
        try:
            await _update_job(
                db,
                job_id,
                status=FAILED,
                error=f"{type(exc).__name__}: {exc}"[:2000],
                finish_time=utcnow(),
                duration_ms=int((time.perf_counter() - started) * 1000),
            )
        except Exception:
            log.exception("dedupe job %s: could not record the failure", job_id)


# --- the pairs a job found ----------------------------------------------------------------------------


async def list_pairs(
    session: AsyncSession,
    job: DedupeJobRow,
    request: dedupe_pb2.ListDuplicatePairsRequest,
    where: Sequence[ColumnElement[bool]],
) -> tuple[list[dedupe_pb2.DuplicatePair], str]:
    """A page of the job's pairs, best first (score descending, then id); pairs of which a contact no
    longer exists (merged, deleted) or is not visible to the caller are left out."""
    v = Violations()
    min_score = score_arg(v, "min_score", request.min_score, job.min_score)
    v.raise_if_any()
    filters = {"job_id": job.id, "min_score": min_score}
    size = pagination.page_size(request.page_size)
    after = pagination.decode_key(request.page_token, filters, 2) if request.page_token else None
    stmt = (
        select(DuplicatePairRow)
        .where(DuplicatePairRow.job_id == job.id, DuplicatePairRow.score >= min_score)
        .where(
            select(Contact.id).where(Contact.id == DuplicatePairRow.first_id, *where).exists(),
            select(Contact.id).where(Contact.id == DuplicatePairRow.second_id, *where).exists(),
        )
    )
    if after:
        if not after[0].isdigit():
            raise InvalidArgument.field("page_token", "is not a token this service issued")
        score_after = int(after[0])
        stmt = stmt.where(
            or_(
                DuplicatePairRow.score < score_after,
                and_(DuplicatePairRow.score == score_after, DuplicatePairRow.id > after[1]),
            )
        )
    stmt = stmt.order_by(DuplicatePairRow.score.desc(), DuplicatePairRow.id).limit(size + 1)
    rows = list((await session.execute(stmt)).scalars())
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = pagination.encode_token([str(rows[-1].score), rows[-1].id], filters)
    profiles = await load_profiles(session, {r.first_id for r in rows} | {r.second_id for r in rows})
    out = []
    for r in rows:
        reasons = [reason_message(x) for x in r.reasons or ()]
        a, b = profiles.get(r.first_id), profiles.get(r.second_id)
        out.append(
            dedupe_pb2.DuplicatePair(
                id=r.id,
                job_id=r.job_id,
                first=customer_pb2.DuplicateCandidate(
                    contact_id=r.first_id, display_name=a.display_name if a else "", score=r.score, reasons=reasons
                ),
                second=customer_pb2.DuplicateCandidate(
                    contact_id=r.second_id, display_name=b.display_name if b else "", score=r.score, reasons=reasons
                ),
                score=r.score,
                reasons=reasons,
            )
        )
    return out, token


async def pairs_of(session: AsyncSession, contact_id: str) -> list[DuplicatePairRow]:
    stmt = select(DuplicatePairRow).where(
        or_(DuplicatePairRow.first_id == contact_id, DuplicatePairRow.second_id == contact_id)
    )
    return list((await session.execute(stmt)).scalars())


async def erase_pairs(session: AsyncSession, contact_id: str) -> int:
    stmt = (
        delete(DuplicatePairRow)
        .where(or_(DuplicatePairRow.first_id == contact_id, DuplicatePairRow.second_id == contact_id))
        .execution_options(synchronize_session=False)
    )
    result: Any = await session.execute(stmt)
    return int(result.rowcount or 0)


# --- on create ----------------------------------------------------------------------------------------

RULE_FIELDS = {
    matching.EMAIL: "email",
    matching.PHONE: "phone",
    matching.NAME: "last_name",
    matching.ACCOUNT: "account_id",
}


async def check_new_contact(
    session: AsyncSession,
    values: dict[str, Any],
    *,
    threshold: int,
    block: bool,
    allow_duplicate: bool,
    visible: ColumnElement[bool],
) -> list[customer_pb2.DuplicateCandidate]:
    """The likely duplicates of a contact about to be created (scoring at least `threshold`, the tenant's
    duplicate_threshold), among those the caller may see. With `block` (the tenant's duplicate_policy) and
    any likely duplicate in the tenant, ALREADY_EXISTS naming the fields that matched, unless
    `allow_duplicate` (an admin's override)."""
    found = await find_candidates(session, matching.profile(values, "-"), min_score=threshold, limit=MAX_LOOKUP)
    if not found:
        return []
    ids = [p.id for p, _ in found]
    seen = set((await session.execute(select(Contact.id).where(Contact.id.in_(ids), visible))).scalars())
    shown = [(p, m) for p, m in found if p.id in seen]
    if block and not allow_duplicate:
        fields: dict[str, str] = {}
        for _, m in found:
            for r in m.reasons:
                field = RULE_FIELDS.get(r.rule, "")
                if field and field not in fields:
                    fields[field] = (
                        f"matches an existing contact ({r.rule}: {r.detail})"
                        if r.rule != "name"
                        else ("is very similar to an existing contact's name")
                    )
        described = ", ".join(f"{p.display_name} ({p.id}, score {m.score})" for p, m in shown[:5])
        hidden = len(found) - len(shown)
        text = f"likely duplicate of {described}" if described else "likely duplicate of an existing contact"
        if hidden and described:
            text += f" and {hidden} contact(s) you cannot see"
        raise AlreadyExists(
            f"{text}; the tenant's duplicate policy is block (merge the contacts, or an admin may create it with "
            "allow_duplicate)",
            [FieldViolation(f, d) for f, d in fields.items()],
        )
    return [candidate_message(p, m) for p, m in shown[:20]]
