"""crm_kit.liveness: a job's heartbeat beats while its body runs, survives a failing beat, and stops with
the body; a beat older than STALE_AFTER means the run is dead."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from crm_kit import liveness
from crm_kit.context import current_tenant, tenant_scope
from crm_kit.db.base import utcnow


async def test_heartbeat_beats_in_the_callers_context_until_the_body_ends() -> None:
    beats: list[str | None] = []

    async def beat() -> None:
        beats.append(current_tenant())
        if len(beats) == 2:
            raise RuntimeError("the database blinked")  # logged; the next beat still comes

    with tenant_scope("t-live"):
        async with liveness.heartbeat(beat, every=0.02):
            await asyncio.sleep(0.25)
    after = len(beats)
    await asyncio.sleep(0.1)
    assert after >= 5 and set(beats) == {"t-live"}
    assert len(beats) == after  # no beat once the body is done


async def test_heartbeat_stops_when_the_body_fails() -> None:
    beats = 0

    async def beat() -> None:
        nonlocal beats
        beats += 1

    with pytest.raises(ValueError):
        async with liveness.heartbeat(beat, every=0.01):
            await asyncio.sleep(0.05)
            raise ValueError("the job failed")
    seen = beats
    await asyncio.sleep(0.05)
    assert seen > 0 and beats == seen


def test_a_beat_older_than_stale_after_is_dead() -> None:
    now = utcnow()
    assert not liveness.is_stale(now - liveness.STALE_AFTER + timedelta(seconds=1), now)
    assert liveness.is_stale(now - liveness.STALE_AFTER - timedelta(seconds=1), now)
    assert timedelta(seconds=liveness.HEARTBEAT_SECONDS * 4) < liveness.STALE_AFTER
