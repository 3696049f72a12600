from __future__ import annotations

from crm_gateway.auth.ratelimit import RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_limit_then_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(3, 60.0, clock=clock)
    assert [limiter.hit("ip") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.hit("ip")
    assert 19.0 < wait <= 20.0
    assert retry_after_header(wait) == "20"
    assert limiter.hit("other") == 0.0
    clock.now = 20.0
    assert limiter.hit("ip") == 0.0
    assert limiter.hit("ip") > 0


def test_memory_stays_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(2, 1.0, max_keys=100, clock=clock)
    for i in range(1000):
        limiter.hit(f"k{i}")
        clock.now += 0.01
    assert len(limiter._buckets) <= 101
