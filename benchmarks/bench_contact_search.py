"""Filtered contact search at 100k contacts: `make bench`.

For each backend (SQLite always; PostgreSQL when CRM_TEST_POSTGRES_URL is set):
  1. start the real customer service (migrations, gRPC server) on a fresh database;
  2. bulk-load 100,000 contacts for one tenant and 20,000 for another (so the other tenant's rows sit in
     the same tables and indexes, and isolation costs what it costs), with 2,000 + 400 accounts, through
     `crm_customer.bulk.insert_contacts`: the stored shape and search maintenance of the service's own
     writes (document, FTS5 rows via triggers / generated tsvector, contact_tags) and the custom fields'
     typed index (custom_fields.index_rows), in batches of 2,000, then ANALYZE (PostgreSQL: VACUUM
     ANALYZE), what any bulk import should end with;
  3. time 240 + 75 filtered searches through the gRPC server (after 20 warm-up calls), page_size 50:
     free text (Chinese name fragments of 1 to 3 characters, email and phone fragments, company names as
     people type them (a brand such as 腾达, or two), Latin names) combined with tags, classification,
     owner and lifecycle stage, and a few sort orders, custom-field sorts (number, select, date) and a
     custom-field filter; the custom-field sorts are timed again without the value-index pager;
  4. print p50/p95/p99 overall and per kind of query, and the load rate.

It asserts nothing about speed (machines differ); the target is p95 < 50 ms. The data is generated from a
fixed seed, so runs are comparable.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import insert

from crm.customer.v1 import customer_pb2 as pb
from crm.customer.v1 import customer_pb2_grpc
from crm_customer import search
from crm_customer.app import SPEC
from crm_customer.bulk import insert_contacts
from crm_customer.custom_fields import CONTACT, CustomFieldDefinition, CustomFieldValue, index_rows
from crm_customer.models import Account
from crm_kit.context import tenant_scope
from crm_kit.db.engine import create_engine
from crm_kit.db.ids import uuid7
from crm_kit.runtime import ServiceRuntime
from crm_kit.testing.databases import DatabaseFactory, DatabaseUrls
from crm_kit.testing.services import start_service
from crm_kit.testing.tokens import TokenIssuer

MAIN, OTHER = "bench-main", "bench-other"
SIZES = {MAIN: 100_000, OTHER: 20_000}
ACCOUNTS = {MAIN: 2_000, OTHER: 400}
BATCH = 2_000
WARMUP, MEASURED = 20, 240
PAGE_SIZE = 50

SURNAMES = list(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜"
)
SURNAMES += ["欧阳", "司马", "上官", "诸葛"]
GIVEN = list("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚华玉萍红鹏飞鑫波斌宇浩凯健俊帆帅旭宁婷雪琳晨晓燕云峰亮")
LATIN_FIRST = [
    "James",
    "Mary",
    "John",
    "Patricia",
    "Robert",
    "Jennifer",
    "Michael",
    "Linda",
    "William",
    "Elizabeth",
    "David",
    "Susan",
    "Sarah",
    "Karen",
]
LATIN_LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Martinez",
    "Wilson",
    "Anderson",
    "Taylor",
    "Moore",
    "Lee",
]
SYLLABLES = [
    "wang",
    "li",
    "zhang",
    "liu",
    "chen",
    "yang",
    "huang",
    "zhao",
    "wu",
    "zhou",
    "xu",
    "sun",
    "ma",
    "zhu",
    "hu",
    "guo",
    "he",
    "gao",
    "lin",
    "luo",
]
GIVEN_SYLLABLES = [
    "wei",
    "fang",
    "na",
    "min",
    "jing",
    "qiang",
    "lei",
    "jun",
    "yong",
    "yan",
    "jie",
    "juan",
    "tao",
    "ming",
    "chao",
    "xia",
    "ping",
    "gang",
    "hua",
    "yu",
]
DOMAINS = [
    "qq.com",
    "163.com",
    "126.com",
    "gmail.com",
    "outlook.com",
    "sina.com",
    "example.cn",
    "foxmail.com",
    "corp.example.com",
]
CITIES = ["北京", "上海", "深圳", "杭州", "广州", "成都", "南京", "武汉", "西安", "苏州"]
CORES = [
    "华创",
    "腾达",
    "阿里",
    "字节",
    "美团",
    "京东",
    "小米",
    "网易",
    "百度",
    "携程",
    "蔚来",
    "海康",
    "大疆",
    "顺丰",
    "恒信",
    "鼎盛",
    "金桥",
    "天成",
    "远景",
    "新源",
]
SUFFIXES = ["科技有限公司", "网络技术有限公司", "贸易有限公司", "信息技术有限公司", "实业集团"]
LATIN_CO = [
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Wonka",
    "Hooli",
    "Vandelay",
    "Soylent",
    "Cyberdyne",
    "Tyrell",
]
TAGS = [f"tag{i:02d}" for i in range(20)] + ["vip", "重要客户", "北京", "上海", "展会", "老客户", "新客户", "合作伙伴"]
TAG_WEIGHTS = [3] * 20 + [6, 5, 5, 5, 4, 4, 4, 3]
OWNERS = [f"0190a5f2-0000-7000-8000-{i:012x}" for i in range(50)]
CLASSIFICATIONS = (["core"] * 1) + (["potential"] * 3) + (["general"] * 6)
STAGES = ["lead", "prospect", "customer", "loyal", "churned"]
MOBILE_PREFIXES = ["130", "131", "132", "135", "136", "137", "138", "139", "150", "151", "158", "186", "188", "199"]
# The tenant's custom fields, and how many contacts hold a value of each.
CUSTOM_TYPES = {"score": "number", "tier": "select", "renewal": "date"}
TIERS = ["gold", "silver", "bronze", "trial"]
CUSTOM_SORTS = ("custom.score", "-custom.renewal+class", "custom.tier+q=surname", "-custom.score+tag")


@dataclass
class Dataset:
    """What was loaded for one tenant, to draw realistic queries from."""

    names: list[str] = field(default_factory=list)
    givens: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    companies: list[str] = field(default_factory=list)


def company_name(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return rng.choice(CITIES) + rng.choice(CORES) + rng.choice(CORES) + rng.choice(SUFFIXES)
    return (
        f"{rng.choice(LATIN_CO)} {rng.choice(['Trading', 'Systems', 'Labs', 'Holdings'])} {rng.choice(['Ltd', 'Inc'])}"
    )


def contact_values(
    rng: random.Random, accounts: list[str], now: datetime, data: Dataset, custom_rng: random.Random
) -> dict[str, Any]:
    """One contact as the service stores it after normalisation (its custom fields drawn from `custom_rng`,
    so the rest is what earlier runs of this benchmark loaded)."""
    if rng.random() < 0.75:
        last, first = rng.choice(SURNAMES), "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))
        data.names.append(last + first)
        data.givens.append(first)
    else:
        first, last = rng.choice(LATIN_FIRST), rng.choice(LATIN_LAST)
        data.names.append(last.lower())
    local = f"{rng.choice(GIVEN_SYLLABLES)}.{rng.choice(SYLLABLES)}{rng.randint(1, 9999)}"
    email = f"{local}@{rng.choice(DOMAINS)}"
    mobile = "+86" + rng.choice(MOBILE_PREFIXES) + f"{rng.randint(0, 99_999_999):08d}"
    phones = [{"type": "mobile", "number": mobile, "primary": True}]
    if rng.random() < 0.2:
        phones.append({"type": "work", "number": f"+8610{rng.randint(60_000_000, 89_999_999)}", "primary": False})
    data.emails.append(local)
    data.phones.append(mobile)
    created = now - timedelta(seconds=rng.randint(0, 2 * 365 * 86400), microseconds=rng.randint(0, 999_999))
    tags = sorted(set(rng.choices(TAGS, TAG_WEIGHTS, k=rng.choice((0, 1, 1, 2, 2, 3)))))
    custom: dict[str, Any] = {}
    if custom_rng.random() < 0.8:
        custom["score"] = custom_rng.randint(0, 1000)
    if custom_rng.random() < 0.6:
        custom["tier"] = custom_rng.choice(TIERS)
    if custom_rng.random() < 0.5:
        custom["renewal"] = (now + timedelta(days=custom_rng.randint(-400, 400))).date().isoformat()
    return {
        "custom_fields": custom,
        "first_name": first,
        "last_name": last,
        "email": email,
        "emails": [{"type": "work", "address": email, "primary": True}],
        "phone": mobile,
        "phones": phones,
        "account_id": rng.choice(accounts) if rng.random() < 0.7 else "",
        "owner_id": rng.choice(OWNERS),
        "tags": tags,
        "gender": rng.choice(("male", "female", "unknown")),
        "job_title": rng.choice(("", "经理", "总监", "工程师", "Sales Manager", "CTO")),
        "source": rng.choice(("web", "referral", "event", "import")),
        "classification": rng.choice(CLASSIFICATIONS),
        "lifecycle_stage": rng.choice(STAGES),
        "create_time": created,
        "update_time": created + timedelta(days=rng.randint(0, 30)),
    }


async def load_tenant(rt: ServiceRuntime, tenant: str, rng: random.Random) -> tuple[Dataset, float]:
    """Bulk-load one tenant; returns what was loaded and the seconds it took."""
    data = Dataset()
    started = time.perf_counter()
    with tenant_scope(tenant):
        accounts: list[str] = []
        async with rt.db.transaction() as session:
            for _ in range(ACCOUNTS[tenant]):
                name = company_name(rng)
                row = Account(id=uuid7(), name=name, owner_id=rng.choice(OWNERS), tags=[])
                session.add(row)
                accounts.append(row.id)
                data.companies.append(name)
            for key, kind in CUSTOM_TYPES.items():
                options = [{"key": t, "label": t} for t in TIERS] if kind == "select" else []
                session.add(
                    CustomFieldDefinition(id=uuid7(), entity=CONTACT, key=key, label=key, type=kind, options=options)
                )
        now = datetime.now(UTC)
        total = SIZES[tenant]
        custom_rng = random.Random(f"{tenant}-custom")
        for start in range(0, total, BATCH):
            batch = [contact_values(rng, accounts, now, data, custom_rng) for _ in range(min(BATCH, total - start))]
            async with rt.db.transaction() as session:
                ids = await insert_contacts(session, batch)
                values = [
                    row
                    for id_, contact in zip(ids, batch, strict=True)
                    for row in index_rows(tenant, CONTACT, id_, contact["custom_fields"], CUSTOM_TYPES)
                ]
                await session.execute(insert(CustomFieldValue.__table__), values)
    return data, time.perf_counter() - started


@dataclass(frozen=True)
class Query:
    kind: str
    request: pb.ListContactsRequest


def queries(data: Dataset, rng: random.Random, count: int, *, custom: bool = False) -> list[Query]:
    """`count` queries of the built-in filters and sorts, or (`custom`) of the custom-field ones."""

    def fragment(text: str, size: int) -> str:
        start = rng.randint(0, max(0, len(text) - size))
        return text[start : start + size]

    tag = lambda: rng.choice(TAGS)  # noqa: E731
    cls = lambda: rng.choice(("core", "potential", "general"))  # noqa: E731
    owner = lambda: rng.choice(OWNERS)  # noqa: E731
    chinese = [n for n in data.names if not n.isascii()]
    makers: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (
            "q=surname(1)+tag+class+owner",
            lambda: {"q": rng.choice(SURNAMES[:40]), "tags": [tag()], "classification": cls(), "owner_id": owner()},
        ),
        ("q=full name(3)", lambda: {"q": rng.choice([n for n in chinese[:5000] if len(n) >= 3])}),
        (
            "q=given(2)+class",
            lambda: {"q": rng.choice([g for g in data.givens[:5000] if len(g) == 2]), "classification": cls()},
        ),
        ("q=email fragment", lambda: {"q": fragment(rng.choice(data.emails), 9)}),
        ("q=domain+owner", lambda: {"q": rng.choice(DOMAINS), "owner_id": owner()}),
        ("q=phone fragment+tag", lambda: {"q": fragment(rng.choice(data.phones), 7), "tags": [tag()]}),
        (
            "q=company+class",
            lambda: {"q": rng.choice(CORES) + rng.choice(("", rng.choice(CORES))), "classification": cls()},
        ),
        ("q=latin+tag", lambda: {"q": rng.choice(LATIN_LAST).lower(), "tags": [tag()]}),
        ("tag+class+owner", lambda: {"tags": [tag()], "classification": cls(), "owner_id": owner()}),
        (
            "2 tags+stage, by last_name",
            lambda: {"tags": [tag(), tag()], "lifecycle_stage": rng.choice(STAGES), "order_by": "last_name"},
        ),
        (
            "q=surname(1)+owner, -update_time",
            lambda: {"q": rng.choice(SURNAMES[:40]), "owner_id": owner(), "order_by": "-update_time"},
        ),
        ("q=surname+given(2)+tag", lambda: {"q": rng.choice(chinese[:5000])[:2], "tags": [tag()]}),
    ]
    custom_makers: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (CUSTOM_SORTS[0], lambda: {"order_by": "custom.score"}),
        (CUSTOM_SORTS[1], lambda: {"order_by": "-custom.renewal", "classification": cls()}),
        (CUSTOM_SORTS[2], lambda: {"order_by": "custom.tier", "q": rng.choice(SURNAMES[:40])}),
        (CUSTOM_SORTS[3], lambda: {"order_by": "-custom.score", "tags": [tag()]}),
        ("custom filter score+tag", lambda: {"custom_filter": [f"score>={rng.randint(0, 900)}"], "tags": [tag()]}),
    ]
    chosen = custom_makers if custom else makers
    out = []
    for i in range(count):
        kind, make = chosen[i % len(chosen)]
        out.append(Query(kind, pb.ListContactsRequest(page_size=PAGE_SIZE, **make())))
    rng.shuffle(out)
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Service:
    runtime: ServiceRuntime
    urls: DatabaseUrls


@pytest.fixture(scope="module")
async def bench(database_factory: DatabaseFactory, nats_url: str, token_issuer: TokenIssuer) -> AsyncIterator[Service]:
    urls = database_factory.create("bench")
    rt = await start_service(SPEC, urls, nats_url=nats_url, verifier=token_issuer.verifier())
    yield Service(rt, urls)
    await rt.stop()


async def after_bulk_load(urls: DatabaseUrls) -> None:
    """What a bulk load ends with: fresh planner statistics; on PostgreSQL also VACUUM (as the owner), which
    merges the GIN indexes' pending lists and marks pages all-visible (index-only scans of contact_tags)."""
    engine = create_engine(urls.owner)
    try:
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.exec_driver_sql("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE")
    finally:
        await engine.dispose()


@pytest.mark.timeout(3600)
async def test_contact_search_at_100k(
    bench: Service, token_issuer: TokenIssuer, db_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = bench.runtime
    rng = random.Random(20240404)
    loaded: dict[str, Dataset] = {}
    seconds = 0.0
    for tenant in (MAIN, OTHER):
        loaded[tenant], took = await load_tenant(service, tenant, rng)
        seconds += took
    started = time.perf_counter()
    await after_bulk_load(bench.urls)
    analyze = time.perf_counter() - started
    rows = sum(SIZES.values())

    md = token_issuer.metadata(MAIN, roles=("manager",))
    # The built-in mix is the same as before custom fields were measured; the custom-field queries come on top.
    plan = queries(loaded[MAIN], random.Random(7), WARMUP + MEASURED)
    plan += queries(loaded[MAIN], random.Random(8), 75, custom=True)
    timings: dict[str, list[float]] = {}
    every: list[float] = []
    hits: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = customer_pb2_grpc.CustomerServiceStub(channel)
        for i, query in enumerate(plan):
            t0 = time.perf_counter()
            reply = await stub.ListContacts(query.request, metadata=md)
            ms = (time.perf_counter() - t0) * 1000
            if i < WARMUP:
                continue
            every.append(ms)
            hits.append(len(reply.contacts))
            timings.setdefault(query.kind, []).append(ms)
        # The same custom-field sorts the way they ran before the value-index pager: the database sorts
        # every contact of the tenant by the coalesced value (what export still does, unpaged).
        monkeypatch.setattr(search, "_pagers", [])
        unpaged: list[float] = []
        for query in plan[WARMUP:]:
            if query.kind in CUSTOM_SORTS:
                t0 = time.perf_counter()
                await stub.ListContacts(query.request, metadata=md)
                unpaged.append((time.perf_counter() - t0) * 1000)

    print(f"\n=== contact search benchmark: {db_backend} ===")
    print(
        f"load: {rows:,} contacts ({SIZES[MAIN]:,} + {SIZES[OTHER]:,} in another tenant) in {seconds:.1f} s"
        f" = {rows / seconds:,.0f} rows/s; {'VACUUM ANALYZE' if db_backend == 'postgres' else 'ANALYZE'}"
        f" {analyze:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"searches: {len(every)} through gRPC, page_size {PAGE_SIZE}, {WARMUP} warm-up calls not counted;"
        f" {sum(1 for h in hits if h):d} returned rows, mean {statistics.mean(hits):.1f} per page"
    )
    print(
        f"  overall                          p50 {percentile(every, 50):6.1f} ms  p95 {percentile(every, 95):6.1f} ms"
        f"  p99 {percentile(every, 99):6.1f} ms  max {max(every):6.1f} ms"
    )
    for kind, values in sorted(timings.items()):
        print(
            f"  {kind:<33}p50 {percentile(values, 50):6.1f} ms  p95 {percentile(values, 95):6.1f} ms"
            f"  max {max(values):6.1f} ms  (n={len(values)})"
        )
    custom = [ms for kind in CUSTOM_SORTS for ms in timings[kind]]
    print(
        f"  custom-field sorts: p50 {percentile(custom, 50):.1f} ms, p95 {percentile(custom, 95):.1f} ms from the"
        f" value index; p50 {percentile(unpaged, 50):.1f} ms, p95 {percentile(unpaged, 95):.1f} ms sorting every"
        f" contact (n={len(unpaged)})"
    )
    target = "met" if percentile(every, 95) < 50 else "NOT met"
    print(f"target p95 < 50 ms: {target}; load average now {os.getloadavg()[0]:.1f}")
    assert len(every) >= 200
