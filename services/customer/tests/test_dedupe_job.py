"""The batch dedupe job over a few thousand generated contacts: it finds the planted duplicates (same email,
same phone, the same Chinese name written differently at the same account), reports progress, completes,
pages its pairs best first, leaves out merged contacts, and stays inside its tenant and role."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from crm.customer.v1 import customer_pb2 as cpb
from crm.customer.v1 import customer_pb2_grpc, dedupe_pb2_grpc
from crm.customer.v1 import dedupe_pb2 as pb
from crm_customer import bulk
from crm_customer.app import SPEC
from crm_kit.context import tenant_scope
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

N = int(os.environ.get("CRM_DEDUPE_TEST_CONTACTS", "") or 3000)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏辉建国文斌宇浩凯晨欣怡雪梅琳晶"


@pytest.fixture(scope="module")
async def customer(
    database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[ServiceRuntime]:
    rt = await start_service(
        SPEC, database_factory.create("dedupejob"), nats_url=nats_url, verifier=token_issuer.verifier()
    )
    yield rt
    await rt.stop()


@pytest.fixture(scope="module")
async def channel(customer: ServiceRuntime) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{customer.port}") as ch:
        yield ch


def generated(rng: random.Random, n: int) -> list[dict[str, object]]:
    """n distinct people: unique emails and phones, names from a small pool (so many share a surname)."""
    out: list[dict[str, object]] = []
    for i in range(n):
        email = f"user{i}@example.cn"
        phone = f"+86139{i:08d}"
        out.append(
            {
                "first_name": rng.choice(GIVEN) + rng.choice(GIVEN),
                "last_name": rng.choice(SURNAMES),
                "email": email,
                "emails": [{"type": "other", "address": email, "primary": True}],
                "phone": phone,
                "phones": [{"type": "mobile", "number": phone, "primary": True}],
            }
        )
    return out


async def wait_done(stub: dedupe_pb2_grpc.DedupeServiceStub, job_id: str, md: object) -> tuple[pb.DedupeJob, list[int]]:
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = await stub.GetDedupeJob(pb.GetDedupeJobRequest(id=job_id), metadata=md)  # type: ignore[arg-type]
        seen.append(job.progress_percent)
        if job.status in ("succeeded", "failed"):
            return job, seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


async def test_batch_job_finds_planted_duplicates(
    customer: ServiceRuntime, channel: grpc.aio.Channel, token_issuer: TokenIssuer
) -> None:
    tid = f"t-ddj-{uuid.uuid4().hex[:8]}"
    md = token_issuer.metadata(tid)
    stub = dedupe_pb2_grpc.DedupeServiceStub(channel)
    contacts = customer_pb2_grpc.CustomerServiceStub(channel)
    rng = random.Random(4)
    people = generated(rng, N)
    account = await contacts.CreateAccount(cpb.CreateAccountRequest(account=cpb.Account(name="杭州")), metadata=md)
    # Planted duplicates of people 0..9: the same email (another name), the same phone (the name written
    # with a space), and at 20..29 the exact name at the same account with nothing else shared.
    planted_email: list[dict[str, object]] = [
        {"first_name": "X", "last_name": "Y", "email": f"user{i}@example.cn"} for i in range(5)
    ]
    planted_phone: list[dict[str, object]] = [
        {
            "first_name": "",
            "last_name": f"{people[i]['last_name']} {people[i]['first_name']}",
            "phone": f"+86139{i:08d}",
        }
        for i in range(5, 10)
    ]
    for i in range(20, 30):
        people[i]["account_id"] = account.id
    planted_name = [
        {"first_name": people[i]["first_name"], "last_name": people[i]["last_name"], "account_id": account.id}
        for i in range(20, 30)
    ]
    for extra in planted_email + planted_phone:
        extra["emails"] = [{"type": "other", "address": extra["email"], "primary": True}] if extra.get("email") else []
        extra["phones"] = [{"type": "mobile", "number": extra["phone"], "primary": True}] if extra.get("phone") else []
    with tenant_scope(tid):
        async with customer.db.transaction() as session:
            ids = await bulk.insert_contacts(session, people)
            planted = await bulk.insert_contacts(session, planted_email + planted_phone + planted_name)
    expected = {tuple(sorted((ids[i], planted[k]))) for k, i in enumerate([*range(10), *range(20, 30)])}

    # Members may not start or read jobs.
    member = token_issuer.metadata(tid, subject="rep", roles=("member",))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartDedupeJob(pb.StartDedupeJobRequest(), metadata=member)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartDedupeJob(pb.StartDedupeJobRequest(min_score=500), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    started = time.perf_counter()
    job = await stub.StartDedupeJob(pb.StartDedupeJobRequest(min_score=70), metadata=md)
    assert job.status == "pending" and job.min_score == 70
    job, progress = await wait_done(stub, job.id, md)
    elapsed = time.perf_counter() - started
    print(
        f"\ndedupe job: {job.contacts_total} contacts, {job.candidate_pairs} candidate pairs, "
        f"{job.pairs_found} found in {job.duration_ms} ms (wall {elapsed:.2f} s)"
    )
    assert job.status == "succeeded", job.error
    assert job.contacts_total == N + 20 and job.progress_percent == 100
    assert progress == sorted(progress) and job.pairs_scored == job.candidate_pairs
    assert job.candidate_pairs < (N * N) // 20  # blocking, not all pairs
    assert job.start_time.seconds and job.finish_time.seconds

    pairs: list[pb.DuplicatePair] = []
    token = ""
    while True:
        page = await stub.ListDuplicatePairs(
            pb.ListDuplicatePairsRequest(job_id=job.id, page_size=7, page_token=token), metadata=md
        )
        pairs += page.items
        token = page.next_page_token
        if not token:
            break
    found = {tuple(sorted((p.first.contact_id, p.second.contact_id))) for p in pairs}
    assert expected <= found
    assert len(pairs) == job.pairs_found
    scores = [p.score for p in pairs]
    assert scores == sorted(scores, reverse=True)
    by_pair = {tuple(sorted((p.first.contact_id, p.second.contact_id))): p for p in pairs}
    email_pair = by_pair[tuple(sorted((ids[0], planted[0])))]
    assert [(r.rule, r.detail) for r in email_pair.reasons] == [("email", "user0@example.cn")]
    phone_pair = by_pair[tuple(sorted((ids[5], planted[5])))]
    assert [r.rule for r in phone_pair.reasons] == ["phone", "name"] and phone_pair.score == 100
    name_pair = by_pair[tuple(sorted((ids[20], planted[10])))]
    assert [r.rule for r in name_pair.reasons] == ["name", "account"] and name_pair.score == 70

    # A merged contact drops out of the pairs; another tenant sees neither job nor pairs.
    await stub.MergeContacts(pb.MergeContactsRequest(id=ids[0], duplicate_id=planted[0]), metadata=md)
    page = await stub.ListDuplicatePairs(pb.ListDuplicatePairsRequest(job_id=job.id, page_size=500), metadata=md)
    assert len(page.items) == job.pairs_found - 1
    high = await stub.ListDuplicatePairs(pb.ListDuplicatePairsRequest(job_id=job.id, min_score=100), metadata=md)
    assert high.items and all(p.score == 100 for p in high.items)
    other = token_issuer.metadata(f"t-ddj-{uuid.uuid4().hex[:8]}")
    for call in (
        stub.GetDedupeJob(pb.GetDedupeJobRequest(id=job.id), metadata=other),
        stub.ListDuplicatePairs(pb.ListDuplicatePairsRequest(job_id=job.id), metadata=other),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
