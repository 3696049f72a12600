"""Whether a background job is still alive: the one way a service tells a running job from one whose
process died (killed, out of memory, the node gone) while it ran.

A job's run keeps a timestamp fresh with `heartbeat(beat)` for as long as it works, whatever it is doing
(reading a large file, one long query), so a reader can take a job whose last beat is older than
STALE_AFTER for dead and report it failed instead of "running" forever:

    async with heartbeat(lambda: touch(job_id)):
        await work()
    ...
    if status in ACTIVE and is_stale(row.heartbeat_time):
        mark it failed
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta

from crm_kit.db.base import utcnow

log = logging.getLogger("crm_kit.liveness")

HEARTBEAT_SECONDS = 15.0
# Several missed beats: a slow database or a busy event loop delays a beat, it does not skip eight of them.
STALE_AFTER = timedelta(minutes=2)
INTERRUPTED = "interrupted: the service process running it stopped before it finished"


def is_stale(last_beat: datetime, now: datetime | None = None) -> bool:
    """True when a job's last beat is too old for its run to be alive."""
    return (now or utcnow()) - last_beat > STALE_AFTER


@contextlib.asynccontextmanager
async def heartbeat(beat: Callable[[], Awaitable[None]], every: float | None = None) -> AsyncIterator[None]:
    """Call `beat` every `every` seconds (HEARTBEAT_SECONDS) while the body runs, in the caller's context
    (tenant, principal). A failed beat is logged and the next one tries again; it never fails the job."""
    interval = every if every is not None else HEARTBEAT_SECONDS

    async def beating() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await beat()
            except Exception:
                log.warning("a job's heartbeat failed", exc_info=True)

    task = asyncio.create_task(beating(), name="heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
