"""In-memory token-bucket rate limits (per worker process), thread safe.

Each key (an IP, a tenant, a client) gets a bucket of `limit` requests refilled over `window` seconds.
Memory stays bounded: when the table grows past `max_keys`, full (idle) buckets are dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.rate = limit / window
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (float(self.limit), now))
        return min(float(self.limit), tokens + (now - stamp) * self.rate)

    def hit(self, key: str) -> float:
        """Take one request from `key`'s bucket: 0.0 if allowed, otherwise seconds until it would be."""
        now = self.clock()
        with self._lock:
            tokens = self._level(key, now)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return max(0.001, (1.0 - tokens) / self.rate)
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_keys:
                self._prune(now)
            return 0.0

    def _prune(self, now: float) -> None:
        full = [k for k in self._buckets if self._level(k, now) >= self.limit]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) > self.max_keys:  # still too many active keys: forget the oldest half
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for key in oldest[: len(oldest) // 2]:
                del self._buckets[key]


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
