"""When to try the cloud again after it failed: capped, jittered exponential backoff.

There is no socket before a wake, so the device never reconnects on its own: "retrying"
means that the next wake after the backoff window tries again, while a wake inside the
window fails at once (an audible error, not a silent hang). The button always tries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    initial_s: float = 2.0
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    """Each delay is scaled by a random factor in [1 - jitter, 1 + jitter], then capped."""

    def delay(self, failures: int, rnd: float) -> float:
        """Delay after the `failures`-th failure in a row; `rnd` is uniform in [0, 1)."""
        base = self.initial_s * self.factor ** max(0, failures - 1)
        spread = 1.0 - self.jitter + 2.0 * self.jitter * rnd
        return min(self.max_s, base * spread)


MAX_RETRY_AFTER_S = 300.0
"""A server's Retry-After is honoured up to this long."""


class Outage:
    """Consecutive failures to reach the cloud, and when trying again is allowed."""

    def __init__(self, policy: BackoffPolicy, random: Callable[[], float]) -> None:
        self.policy = policy
        self._random = random
        self.failures = 0
        self.since: float | None = None
        self.retry_at = 0.0

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, now: float, retry_after_s: float | None = None) -> bool:
        """Record a failure; True if it starts a new outage (worth telling the user loudly)."""
        self.failures += 1
        delay = self.policy.delay(self.failures, self._random())
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
        self.retry_at = now + delay
        started = self.since is None
        if started:
            self.since = now
        return started

    def succeeded(self, now: float) -> float | None:
        """The cloud answered; returns how long the outage lasted, if there was one."""
        lasted = None if self.since is None else now - self.since
        self.failures = 0
        self.since = None
        self.retry_at = 0.0
        return lasted

    def wait(self, now: float) -> float:
        """Seconds until a wake may try again (0: now)."""
        return max(0.0, self.retry_at - now) if self.ongoing else 0.0
