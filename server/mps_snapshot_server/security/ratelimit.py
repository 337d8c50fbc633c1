"""Per-principal token buckets: a flood from one caller never slows another's calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; return 0 if granted, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per (principal, limit class). ``limits`` maps a class to calls per second;
    the burst is one second's worth."""

    def __init__(
        self, limits: dict[str, float], clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def check(self, principal: str, limit_class: str) -> float:
        rate = self.limits.get(limit_class)
        if not rate:
            return 0.0
        now = self.clock()
        key = (principal, limit_class)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                # Buckets of idle callers are full anyway: dropping them loses nothing.
                self._buckets = {k: b for k, b in self._buckets.items() if b.tokens < b.burst}
            bucket = self._buckets[key] = TokenBucket(rate, max(1.0, rate), max(1.0, rate), now)
        return bucket.take(now)
