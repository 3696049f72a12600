"""Chores (crm_kit.runtime.Chore): periodic housekeeping a service process runs by itself from start to
stop; a failing run is logged and the next one still comes, and nothing runs after the service stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from crm_kit.db import Database
from crm_kit.db.base import SystemBase
from crm_kit.runtime import Chore, ServiceRuntime, ServiceSpec
from crm_kit.settings import KitSettings, ServiceSettings
from crm_kit.testing.tokens import TokenIssuer


async def eventually(condition: Callable[[], bool], seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail("the condition did not hold in time")


async def test_chores_run_periodically_survive_failures_and_stop(
    nats_url: str, tmp_path: Path, token_issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    ticks: list[Database] = []
    failures: list[int] = []
    later: list[int] = []

    async def tick(db: Database) -> None:
        ticks.append(db)

    async def broken(db: Database) -> None:
        failures.append(1)
        raise RuntimeError("the chore broke")

    async def not_yet(db: Database) -> None:
        later.append(1)

    spec = ServiceSpec(
        name="chores",
        default_grpc_port=0,
        migrations=tmp_path,
        servicers=lambda rt: [],
        audit=False,
        chores=[
            Chore("tick", 0.05, tick, first_delay=0),
            Chore("broken", 0.05, broken, first_delay=0),
            Chore("not-yet", 0.05, not_yet, first_delay=3600),
        ],
    )
    settings = ServiceSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'chores.db'}", grpc_port=0, shutdown_grace_seconds=0
    )
    rt = ServiceRuntime(spec, settings, KitSettings(nats_url=nats_url), verifier=token_issuer.verifier())
    async with rt.db.engine.begin() as connection:  # the relay's tables
        await connection.run_sync(SystemBase.metadata.create_all)
    caplog.set_level(logging.ERROR, logger="crm_kit.runtime")
    await rt.start()
    try:
        await eventually(lambda: len(ticks) >= 3 and len(failures) >= 3)
        assert all(db is rt.db for db in ticks)  # the service's own database
        assert later == []  # its first run is an hour away
        assert any("chore broken failed" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        await rt.stop()
    done = len(ticks), len(failures)
    assert all(task.done() for task in rt._tasks)
    await asyncio.sleep(0.2)
    assert (len(ticks), len(failures)) == done  # nothing runs after the stop
