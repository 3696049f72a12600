"""Contact import and export over a real gRPC channel, on SQLite and PostgreSQL: header-named CSV without a
mapping, Chinese headers with a mapping (GB18030 too), XLSX, dry runs that write nothing, bad rows never
half-applied, idempotent re-imports by external_id, duplicates in a file, filtered exports and the
export/import round trip, member ownership and tenant isolation."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from openpyxl import Workbook, load_workbook

from crm.customer.v1 import custom_fields_pb2 as cf
from crm.customer.v1 import custom_fields_pb2_grpc, customer_pb2_grpc, transfer_pb2_grpc
from crm.customer.v1 import customer_pb2 as pb
from crm.customer.v1 import transfer_pb2 as tpb
from crm_customer.app import SPEC
from crm_customer.transfer import reader
from crm_customer.transfer.jobs import ImportJob
from crm_kit import liveness
from crm_kit.context import tenant_scope
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.nats import NatsServer
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

Metadata = tuple[tuple[str, str], ...]
DONE = ("succeeded", "failed", "completed_with_errors")


@dataclass
class Stubs:
    transfer: transfer_pb2_grpc.TransferServiceStub
    contacts: customer_pb2_grpc.CustomerServiceStub
    fields: custom_fields_pb2_grpc.CustomFieldServiceStub


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        SPEC, database_factory.create("transfer"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def stubs(customer: ServiceRuntime) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as channel:
        yield Stubs(
            transfer_pb2_grpc.TransferServiceStub(channel),
            customer_pb2_grpc.CustomerServiceStub(channel),
            custom_fields_pb2_grpc.CustomFieldServiceStub(channel),
        )


MEMBER = "0190a5f2-0000-7000-8000-000000000777"


def admin(issuer: TokenIssuer, tenant_id: str) -> Metadata:
    # Subjects are user ids (UUIDs), which owner_id validates.
    return issuer.metadata(tenant_id, subject="0190a5f2-0000-7000-8000-000000000001")


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def csv_bytes(rows: list[list[str]], encoding: str = "utf-8") -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode(encoding)


async def run_import(stubs: Stubs, md: Metadata, content: bytes, **kwargs: Any) -> tpb.ImportJob:
    kwargs.setdefault("filename", "contacts.csv")
    job = await stubs.transfer.StartImport(tpb.StartImportRequest(content=content, **kwargs), metadata=md)
    assert job.status in ("queued", "running")
    return await run_import_done(stubs, md, job.id)


async def contacts(stubs: Stubs, md: Metadata, **filters: Any) -> list[pb.Contact]:
    reply = await stubs.contacts.ListContacts(pb.ListContactsRequest(page_size=500, **filters), metadata=md)
    return list(reply.contacts)


def problems(job: tpb.ImportJob) -> set[tuple[int, str, str]]:
    return {(p.row, p.column, p.field) for p in job.problems}


async def define(stubs: Stubs, md: Metadata, key: str, kind: str, options: tuple[str, ...] = ()) -> None:
    definition = cf.CustomFieldDefinition(
        entity="contact",
        key=key,
        label=key.title(),
        type=kind,
        options=[cf.CustomFieldOption(key=o, label=o) for o in options],
    )
    await stubs.fields.CreateCustomFieldDefinition(
        cf.CreateCustomFieldDefinitionRequest(custom_field_definition=definition), metadata=md
    )


HEADER = ["external_id", "first_name", "last_name", "email", "phone", "tags", "classification", "custom.score"]


async def test_header_named_csv_imports_without_mapping(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    t = tenant()
    md = admin(token_issuer, t)
    await define(stubs, md, "score", "number")
    content = b"\xef\xbb\xbf" + csv_bytes(
        [
            HEADER,
            ["crm-1", " ada ", "Lovelace", "ADA@Example.com", "138 0013 8000", "vip; 展会|老客户", "core", "42"],
            ["crm-2", "", "王", "", "", "", "", ""],
        ]
    )
    job = await run_import(stubs, md, content)
    assert (job.status, job.total_rows, job.created, job.updated, job.failed) == ("succeeded", 2, 2, 0, 0)
    assert job.progress_percent == 100 and job.format == "csv"
    (ada,) = await contacts(stubs, md, external_id="crm-1")
    assert (ada.first_name, ada.email, ada.phone, ada.classification) == (
        "ada",
        "ada@example.com",
        "+8613800138000",
        "core",
    )
    assert list(ada.tags) == ["vip", "展会", "老客户"]
    assert ada.custom_fields["score"].number_value == 42
    (wang,) = await contacts(stubs, md, external_id="crm-2")
    assert (wang.last_name, wang.classification, wang.lifecycle_stage) == ("王", "general", "lead")
    # The imported rows are searchable like any other (search document, tags index).
    assert [c.external_id for c in await contacts(stubs, md, q="lovelace", tag="展会")] == ["crm-1"]


async def test_chinese_headers_with_a_mapping_gb18030(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    t = tenant()
    md = admin(token_issuer, t)
    content = csv_bytes(
        [
            ["编号", "姓名", "手机号码", "电子邮件", "客户等级", "备注"],
            ["c-1", "欧阳娜娜", "13900139000", "nana@example.cn", "核心", "随便"],
            ["c-2", "张伟", "", "", "一般", ""],
        ],
        encoding="gb18030",
    )
    mapping = '{"编号": "external_id", "姓名": "name", "客户等级": "classification", "备注": null}'
    job = await run_import(stubs, md, content, mapping=mapping)
    assert (job.status, job.created) == ("succeeded", 2), job.problems
    (nana,) = await contacts(stubs, md, external_id="c-1")
    assert (nana.last_name, nana.first_name, nana.phone, nana.classification) == (
        "欧阳",
        "娜娜",
        "+8613900139000",
        "core",
    )
    (wei,) = await contacts(stubs, md, external_id="c-2")
    assert (wei.last_name, wei.first_name) == ("张", "伟")
    # The simple line format works as well.
    lines = "编号: external_id\n姓名: name\n客户等级: classification\n备注: -\n"
    again = await run_import(stubs, md, content, mapping=lines, dry_run=True)
    assert (again.status, again.created, again.unchanged) == ("succeeded", 0, 2)


async def test_xlsx_import(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    md = admin(token_issuer, tenant())
    book = Workbook()
    sheet = book.active
    sheet.append(["External ID", "Last Name", "Phone", "Birthday", "Gender"])
    sheet.append(["x-1", "赵", 13700137000, "1990-01-02", "女"])  # a phone typed as a number
    sheet.append([None, None, None, None, None])  # blank rows are skipped
    sheet.append(["x-2", "钱", None, None, None])
    out = io.BytesIO()
    book.save(out)
    job = await run_import(stubs, md, out.getvalue(), filename="客户.xlsx")
    assert (job.status, job.format, job.total_rows, job.created) == ("succeeded", "xlsx", 2, 2)
    (zhao,) = await contacts(stubs, md, external_id="x-1")
    assert (zhao.phone, zhao.birthday, zhao.gender) == ("+8613700137000", "1990-01-02", "female")


async def test_dry_run_reports_problems_and_writes_nothing(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    md = admin(token_issuer, tenant())
    content = csv_bytes(
        [
            ["external_id", "first_name", "last_name", "email", "classification", "birthday"],
            ["d-1", "Ann", "Lee", "not-an-email", "core", ""],
            ["d-2", "", "", "b@example.com", "vip", "2999-01-01"],
            ["d-3", "Good", "Row", "good@example.com", "", ""],
        ]
    )
    job = await run_import(stubs, md, content, dry_run=True)
    assert job.status == "completed_with_errors" and job.dry_run
    assert (job.created, job.failed, job.problem_count) == (1, 2, 4)
    assert problems(job) == {
        (2, "email", "email"),
        (3, "classification", "classification"),
        (3, "birthday", "birthday"),
        (3, "last_name", "last_name"),
    }
    (bad_email,) = [p for p in job.problems if p.row == 2]
    assert bad_email.value == "not-an-email" and "valid email" in bad_email.problem
    assert await contacts(stubs, md) == []
    report = await stubs.transfer.GetImportReport(tpb.GetImportReportRequest(id=job.id), metadata=md)
    assert report.content_type.startswith("text/csv") and report.filename.endswith(".csv")
    lines = list(csv.reader(io.StringIO(report.content.decode("utf-8-sig"))))
    assert lines[0] == ["row", "column", "field", "value", "problem"] and len(lines) == 5
    page = await stubs.transfer.ListImportProblems(
        tpb.ListImportProblemsRequest(job_id=job.id, page_size=3), metadata=md
    )
    rest = await stubs.transfer.ListImportProblems(
        tpb.ListImportProblemsRequest(job_id=job.id, page_size=3, page_token=page.next_page_token), metadata=md
    )
    assert len(page.problems) == 3 and len(rest.problems) == 1 and not rest.next_page_token


async def test_bad_rows_are_never_half_applied_and_reruns_never_duplicate(
    stubs: Stubs, token_issuer: TokenIssuer
) -> None:
    md = admin(token_issuer, tenant())
    rows = [
        ["external_id", "last_name", "email", "phone", "lifecycle_stage"],
        ["r-1", "One", "one@example.com", "13800000001", "lead"],
        ["r-2", "Two", "two@example.com", "12", "customer"],  # bad phone: the whole row stays out
        ["r-3", "Three", "three@example.com", "", "loyal"],
        ["r-3", "Three again", "", "", ""],  # duplicate external id: neither r-3 row is applied
    ]
    job = await run_import(stubs, md, csv_bytes(rows))
    assert (job.status, job.created, job.failed) == ("completed_with_errors", 1, 3)
    assert problems(job) == {
        (3, "phone", "phone"),
        (4, "external_id", "external_id"),
        (5, "external_id", "external_id"),
    }
    assert [c.external_id for c in await contacts(stubs, md)] == ["r-1"]
    assert await contacts(stubs, md, q="two@example.com") == []

    rows[2][3], rows[4][0] = "13800000002", "r-4"
    second = await run_import(stubs, md, csv_bytes(rows))
    assert (second.status, second.created, second.updated, second.unchanged) == ("succeeded", 3, 0, 1)
    third = await run_import(stubs, md, csv_bytes(rows))
    assert (third.created, third.updated, third.unchanged) == (0, 0, 4)
    rows[1][1] = "Uno"
    fourth = await run_import(stubs, md, csv_bytes(rows))
    assert (fourth.created, fourth.updated, fourth.unchanged) == (0, 1, 3)
    everyone = await contacts(stubs, md)
    assert sorted(c.external_id for c in everyone) == ["r-1", "r-2", "r-3", "r-4"]
    (uno,) = [c for c in everyone if c.external_id == "r-1"]
    assert (uno.last_name, uno.version, uno.email) == ("Uno", 2, "one@example.com")
    history = await stubs.contacts.ListContactHistory(pb.ListContactHistoryRequest(contact_id=uno.id), metadata=md)
    assert {c.field for c in history.changes} >= {"classification", "lifecycle_stage"}


async def test_header_problems_stop_the_import(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    md = admin(token_issuer, tenant())
    job = await run_import(stubs, md, csv_bytes([["last_name", "emial", "custom.nope"], ["A", "a@b.cn", "1"]]))
    assert job.status == "failed" and job.created == 0
    assert problems(job) == {(1, "emial", ""), (1, "custom.nope", "custom.nope")}
    assert await contacts(stubs, md) == []
    broken = await run_import(stubs, md, b"PK\x03\x04 not a workbook", filename="x.xlsx")
    assert broken.status == "failed" and "XLSX" in broken.error
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.transfer.StartImport(tpb.StartImportRequest(content=b"", format="pdf"), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.transfer.StartImport(tpb.StartImportRequest(content=b"a", mapping="{nope"), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_export_filtered_csv_and_xlsx_and_round_trip(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    md = admin(token_issuer, tenant())
    await define(stubs, md, "segment", "select", ("a", "b"))
    await define(stubs, md, "channels", "multi_select", ("email", "sms"))
    await define(stubs, md, "vip", "boolean")
    rows = [
        [
            "external_id",
            "last_name",
            "first_name",
            "email",
            "phone",
            "tags",
            "custom.segment",
            "custom.channels",
            "custom.vip",
            "job_title",
        ]
    ]
    rows += [
        [
            f"e-{i}",
            f"姓{i}",
            "名",
            f"p{i}@example.com",
            f"1380000{i:04d}",
            "vip;展会" if i % 2 else "other",
            "a",
            "email;sms",
            "true" if i % 3 else "false",
            "经理",
        ]
        for i in range(30)
    ]
    rows.append(["", "NoExternalId", "", "", "", "vip", "", "", "", ""])
    first = await run_import(stubs, md, csv_bytes(rows))
    assert (first.status, first.created) == ("succeeded", 31)

    exported = await stubs.transfer.ExportContacts(
        tpb.ExportContactsRequest(tag="展会", order_by="external_id"), metadata=md
    )
    table = list(csv.reader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert table[0][:3] == ["id", "external_id", "first_name"] and "custom.segment" in table[0]
    assert [r[1] for r in table[1:]] == sorted(f"e-{i}" for i in range(30) if i % 2)

    everything = await stubs.transfer.ExportContacts(tpb.ExportContactsRequest(format="xlsx"), metadata=md)
    assert everything.content_type.startswith("application/vnd.openxmlformats") and everything.filename.endswith(
        ".xlsx"
    )
    sheet = load_workbook(io.BytesIO(everything.content), read_only=True).worksheets[0]
    assert sum(1 for _ in sheet.iter_rows()) == 32
    # Round trip: both files import back with zero changes (rows match their contacts by id).
    for content, name in ((exported.content, "a.csv"), (everything.content, "b.xlsx")):
        again = await run_import(stubs, md, content, filename=name)
        assert (again.status, again.created, again.updated, again.failed) == ("succeeded", 0, 0, 0), again.problems
    assert len(await contacts(stubs, md)) == 31


async def test_members_own_what_they_import_and_tenants_are_isolated(stubs: Stubs, token_issuer: TokenIssuer) -> None:
    a, b = tenant(), tenant()
    admin_a, admin_b = admin(token_issuer, a), admin(token_issuer, b)
    member = token_issuer.metadata(a, subject=MEMBER, roles=("member",))
    content = csv_bytes([["external_id", "last_name", "owner_id"], ["iso-1", "Alpha", ""], ["iso-2", "Beta", ""]])
    assert (await run_import(stubs, admin_a, content)).created == 2
    # B's import with A's external ids creates B's own contacts.
    job_b = await run_import(stubs, admin_b, content)
    assert (job_b.created, job_b.updated) == (2, 0)
    export_b = await stubs.transfer.ExportContacts(tpb.ExportContactsRequest(), metadata=admin_b)
    ids_b = {c.id for c in await contacts(stubs, admin_b)}
    ids_a = {c.id for c in await contacts(stubs, admin_a)}
    text = export_b.content.decode("utf-8-sig")
    assert all(i in text for i in ids_b) and not any(i in text for i in ids_a)
    # Jobs are tenant data too.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.transfer.GetImportJob(tpb.GetImportJobRequest(id=job_b.id), metadata=admin_a)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # A member's rows are theirs; a contact they do not own is not theirs to update.
    mine = await run_import(
        stubs, member, csv_bytes([["external_id", "last_name"], ["iso-3", "Gamma"], ["iso-1", "X"]])
    )
    assert (mine.created, mine.failed) == (1, 1)
    assert problems(mine) == {(3, "external_id", "external_id")}
    (gamma,) = await contacts(stubs, admin_a, external_id="iso-3")
    assert gamma.owner_id == MEMBER
    denied = await run_import(stubs, member, csv_bytes([["last_name", "owner_id"], ["Delta", str(uuid.uuid4())]]))
    assert problems(denied) == {(2, "owner_id", "owner_id")}
    member_export = await stubs.transfer.ExportContacts(tpb.ExportContactsRequest(), metadata=member)
    assert len(member_export.content.decode("utf-8-sig").strip().splitlines()) == 2  # header + Gamma


def big_file(rows: int) -> bytes:
    """A file large enough to be imported in worker processes, with problems spread over its chunks."""
    lines = [["external_id", "name", "email", "phone", "tags", "classification"]]
    for i in range(rows):
        email = "not-an-email" if i in (10, 1500, 2400) else f"Person{i}@Example.COM"
        external_id = "ext-dup" if i in (5, 2100) else f"ext-{i:05d}"
        name = f"张伟{i}" if i % 2 else f"Ada Lovelace{i}"
        lines.append([external_id, name, email, f"138{i:08d}", "vip;北京", "核心"])
    return csv_bytes(lines)


async def stored(stubs: Stubs, md: Metadata) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    token = ""
    while True:
        reply = await stubs.contacts.ListContacts(pb.ListContactsRequest(page_size=500, page_token=token), metadata=md)
        for c in reply.contacts:
            out[c.external_id] = (c.first_name, c.last_name, c.email, c.phone, tuple(c.tags), c.classification)
        token = reply.next_page_token
        if not token:
            return out


@pytest.mark.parametrize("workers", ["2", "0"])
async def test_a_large_file_gives_the_same_result_in_worker_processes_and_inline(
    workers: str,
    database_factory: DatabaseFactory,
    token_issuer: TokenIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crm_customer.transfer.chunks import INLINE_MAX_ROWS

    rows = INLINE_MAX_ROWS + 600  # over the inline limit: with workers, chunks run in worker processes
    monkeypatch.setenv("CUSTOMER_IMPORT_WORKERS", workers)
    # A server of its own: its thousands of events would otherwise sit in the session's stream, ahead of the
    # events every later test waits for in a consumer that starts from the beginning.
    nats = NatsServer()
    nats.start()
    rt = await start_service(
        SPEC, database_factory.create(f"transfer_w{workers}"), nats_url=nats.url, verifier=token_issuer.verifier()
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
            s = Stubs(
                transfer_pb2_grpc.TransferServiceStub(channel),
                customer_pb2_grpc.CustomerServiceStub(channel),
                custom_fields_pb2_grpc.CustomFieldServiceStub(channel),
            )
            md = admin(token_issuer, tenant())
            content = big_file(rows)
            job = await run_import(s, md, content)
            # Rows 7 and 2102 share an external id; rows 12, 1502 and 2402 have a bad email (row 1 is the header).
            assert (job.status, job.created, job.failed) == ("completed_with_errors", rows - 5, 5)
            assert problems(job) == {
                (7, "external_id", "external_id"),
                (2102, "external_id", "external_id"),
                (12, "email", "email"),
                (1502, "email", "email"),
                (2402, "email", "email"),
            }
            contacts_ = await stored(s, md)
            assert len(contacts_) == rows - 5 and "ext-dup" not in contacts_
            one = ("伟1", "张", "person1@example.com", "+8613800000001", ("vip", "北京"), "core")
            assert contacts_["ext-00001"] == one
            assert contacts_["ext-02598"][:3] == ("Ada", "Lovelace2598", "person2598@example.com")
            again = await run_import(s, md, content)
            assert (again.created, again.updated, again.unchanged, again.failed) == (0, 0, rows - 5, 5)
            assert len(await stored(s, md)) == rows - 5
    finally:
        await rt.stop()
        nats.stop()


async def test_a_job_keeps_beating_while_it_works_and_a_dead_one_is_reported_failed(
    stubs: Stubs, customer: ServiceRuntime, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run keeps its job alive even through a phase that saves no progress (reading a slow file): with
    # beats every 50 ms and a job dead after 300 ms of silence, a 1.2 s read still shows "running".
    monkeypatch.setattr(liveness, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(liveness, "STALE_AFTER", timedelta(milliseconds=300))
    read = reader.read

    def slow_read(fmt: str, content: bytes) -> Any:
        time.sleep(1.2)
        return read(fmt, content)

    monkeypatch.setattr(reader, "read", slow_read)
    t = tenant()
    md = admin(token_issuer, t)
    content = csv_bytes([["external_id", "first_name"], ["beat-1", "Ada"]])
    job = await stubs.transfer.StartImport(tpb.StartImportRequest(content=content, filename="a.csv"), metadata=md)
    await asyncio.sleep(0.8)
    seen = await stubs.transfer.GetImportJob(tpb.GetImportJobRequest(id=job.id), metadata=md)
    assert seen.status == "running", seen.error
    done = await run_import_done(stubs, md, job.id)
    assert (done.status, done.created) == ("succeeded", 1)

    # A job whose process died mid-run (no beat for longer than STALE_AFTER) is reported failed, once,
    # with where it stopped; a finished job is never touched.
    with tenant_scope(t):
        async with customer.db.transaction() as session:
            dead = ImportJob(
                id=str(uuid.uuid4()),
                status="running",
                format="csv",
                filename="big.csv",
                total_rows=100_000,
                processed_rows=41_000,
                actor="0190a5f2-0000-7000-8000-000000000001",
                error="",
            )
            session.add(dead)
            await session.flush()
            dead.update_time = datetime.now(UTC) - timedelta(seconds=1)
    failed = await stubs.transfer.GetImportJob(tpb.GetImportJobRequest(id=dead.id), metadata=md)
    assert failed.status == "failed"
    assert "interrupted" in failed.error and "41000 of 100000 rows" in failed.error
    assert failed.HasField("finish_time")
    again = await stubs.transfer.GetImportJob(tpb.GetImportJobRequest(id=job.id), metadata=md)
    assert again.status == "succeeded"
    # Another tenant cannot see it, dead or alive.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs.transfer.GetImportJob(tpb.GetImportJobRequest(id=dead.id), metadata=admin(token_issuer, tenant()))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def run_import_done(stubs: Stubs, md: Metadata, job_id: str) -> tpb.ImportJob:
    for _ in range(600):
        job = await stubs.transfer.GetImportJob(tpb.GetImportJobRequest(id=job_id), metadata=md)
        if job.status in DONE:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")
