"""Per-API-key request rates: a token bucket per key (``service.limits.key_requests_per_second``,
``key_burst``).

A key's bucket holds up to ``burst`` tokens and refills at ``rate`` per second; each call takes
one. A call that finds the bucket empty is refused with :class:`~engine.domain.Overloaded`
(RESOURCE_EXHAUSTED) saying how long to wait, before any of its work is done. Buckets are
per key id, so one tenant's burst never spends another's allowance. Without auth there is no
key, and nothing is limited here (admission control in :mod:`engine.service.lanes` still is).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from engine.config import LimitsSettings
from engine.domain import Overloaded


class KeyRateLimiter:
    """Token buckets keyed by API key id."""

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limiter needs rate > 0 and burst >= 1")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)
        self._lock = threading.Lock()

    @classmethod
    def from_limits(cls, limits: LimitsSettings) -> KeyRateLimiter | None:
        """The limiter the settings ask for; None when the rate is 0 (unlimited)."""
        if limits.key_requests_per_second <= 0:
            return None
        return cls(limits.key_requests_per_second, limits.key_burst)

    def take(self, key_id: str) -> None:
        """Spend one of ``key_id``'s tokens, or raise Overloaded with the wait for the next."""
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                wait_ms = (1.0 - tokens) / self.rate * 1000
                raise Overloaded(
                    f"API key {key_id} is over its rate of {self.rate:g} calls/s (burst "
                    f"{self.burst}): retry in {max(wait_ms, 1):.0f} ms, or ask the operator "
                    "for a higher service.limits.key_requests_per_second")
            self._buckets[key_id] = (tokens - 1.0, now)
