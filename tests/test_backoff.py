"""Backoff after cloud failures: exponential, jittered, capped, and honouring Retry-After."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as hst

from device.core.backoff import MAX_RETRY_AFTER_S, BackoffPolicy, Outage


def test_delays_double_up_to_the_cap() -> None:
    p = BackoffPolicy(initial_s=2, max_s=30, jitter=0)
    assert [p.delay(n, 0.5) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


@given(hst.integers(1, 50), hst.floats(0, 0.999999))
def test_jitter_stays_within_its_band_and_under_the_cap(failures: int, rnd: float) -> None:
    p = BackoffPolicy(initial_s=2, max_s=30, jitter=0.2)
    d = p.delay(failures, rnd)
    base = min(30.0, 2.0 * 2 ** (failures - 1))
    assert d <= 30.0
    assert 0.8 * base - 1e-9 <= d <= max(1.2 * min(base, 25.0), 30.0 if base >= 25 else 0)


def test_jitter_spreads_devices_apart() -> None:
    p = BackoffPolicy()
    rng = random.Random(7)
    delays = {round(p.delay(3, rng.random()), 3) for _ in range(50)}
    assert len(delays) > 40


def test_an_outage_starts_once_and_ends_on_success() -> None:
    o = Outage(BackoffPolicy(initial_s=2, jitter=0), random.Random(1).random)
    assert o.wait(0) == 0 and not o.ongoing
    assert o.failed(10) is True  # the first failure starts the outage
    assert o.wait(11) == 1
    assert o.failed(12) is False  # the second is part of it
    assert o.wait(12) == 4
    assert o.succeeded(20) == 10
    assert o.wait(20) == 0 and o.failures == 0


def test_retry_after_is_honoured_but_bounded() -> None:
    o = Outage(BackoffPolicy(initial_s=2, jitter=0), random.Random(1).random)
    o.failed(0, retry_after_s=45)
    assert o.wait(0) == 45
    o.failed(0, retry_after_s=10_000)
    assert o.wait(0) == MAX_RETRY_AFTER_S
