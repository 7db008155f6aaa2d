"""Retrying store calls that are safe to repeat: exponential backoff with full jitter.

A Qdrant server that restarts, fails over or drops a connection is usually back
within a second or two, so a server store retries the calls that give the same
result when repeated (reads; upserts, deletes and payload sets by deterministic
point id) instead of failing the request at the first refused connection.

**Full jitter.** The wait before retry ``n`` (1-based) is uniform in ``[0, min(max_delay,
base_delay * 2 ** (n - 1))]``: engine replicas that lost the server together do not come
back in lockstep.

**Bounds.** At most ``attempts`` calls, and no retry whose wait, plus as long as the
last attempt took, would end past the *bound*: the calling request's deadline less a
margin (so the caller still gets the store's error, not DEADLINE_EXCEEDED) when one is
known, and never later than ``total_seconds`` after the first attempt. The service
makes the request's deadline known with :func:`deadline_scope` around the engine call,
on the thread that runs it; code outside a request (bulk jobs, the CLI) has only the
total time. When the retries end, :class:`GaveUp` carries the last error, the attempts
made and the time spent, for the store to phrase.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from engine.config import StoreSettings

T = TypeVar("T")

_DEADLINE: ContextVar[float | None] = ContextVar("mmrec_store_deadline", default=None)
"""``time.monotonic()`` by which the current request must be answered; None: unknown."""


@contextlib.contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Bound the retries of the store calls made inside the block by ``deadline``
    (``time.monotonic()``; None: no deadline known, the configured total time bounds them)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    """The deadline :func:`deadline_scope` set for this thread's current call, if any."""
    return _DEADLINE.get()


class GaveUp(Exception):
    """The retries of a call ended without success: the last error, attempts, time spent."""

    def __init__(self, last: BaseException, attempts: int, elapsed: float, why: str) -> None:
        super().__init__(f"gave up after {attempts} attempts in {elapsed:.2f} s ({why}): {last}")
        self.last = last
        self.attempts = attempts
        self.elapsed = elapsed
        self.why = why
        """What ended them: "attempts", "deadline" (the request's) or "total time"."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a store call that is safe to repeat is retried.

    ``sleep``, ``clock`` and ``jitter`` are injectable so tests check the schedule
    without waiting; ``clock`` must be the clock deadlines are read on (monotonic).
    """

    attempts: int = 4
    """Calls in all, the first included (1: never retry)."""
    base_delay: float = 0.05
    """Seconds: the cap of the first wait; each later cap doubles."""
    max_delay: float = 1.0
    """Seconds: the largest cap of one wait."""
    total_seconds: float = 5.0
    """Seconds after the first attempt past which no retry starts."""
    margin: float = 0.05
    """Seconds kept before the request's deadline to answer with the error."""
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    jitter: Callable[[float, float], float] = field(default=random.uniform, compare=False)

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> RetryPolicy:
        """The policy of the ``[store]`` retry settings (milliseconds there, seconds here)."""
        return cls(attempts=settings.retry_attempts, base_delay=settings.retry_base_ms / 1000,
                   max_delay=settings.retry_max_ms / 1000,
                   total_seconds=settings.retry_total_ms / 1000,
                   margin=settings.retry_deadline_margin_ms / 1000)

    def cap(self, retry: int) -> float:
        """The longest wait before retry ``retry`` (1-based): the doubling, capped."""
        return min(self.max_delay, self.base_delay * 2 ** (retry - 1))

    def delay(self, retry: int) -> float:
        """The wait before retry ``retry``: full jitter, uniform in ``[0, cap(retry)]``."""
        return self.jitter(0.0, self.cap(retry))

    def _bound(self, start: float) -> tuple[float, str]:
        """When no retry may end later, and what sets it (the deadline or the total time)."""
        total = start + self.total_seconds
        deadline = current_deadline()
        if deadline is not None and deadline - self.margin < total:
            return deadline - self.margin, "deadline"
        return total, "total time"

    def run(self, call: Callable[[], T], transient: Callable[[BaseException], bool]) -> T:
        """``call()``, retried after errors ``transient`` accepts, within the bounds.

        An error ``transient`` refuses propagates at once; when the retries end,
        :class:`GaveUp` is raised from the last transient error.
        """
        start = self.clock()
        bound, bound_by = self._bound(start)
        attempt = 0
        while True:
            attempt += 1
            began = self.clock()
            try:
                return call()
            except Exception as exc:
                if not transient(exc):
                    raise
                last = exc
            now = self.clock()
            if attempt >= self.attempts:
                raise GaveUp(last, attempt, now - start, "attempts") from last
            wait = self.delay(attempt)
            if now + wait + (now - began) > bound:
                raise GaveUp(last, attempt, now - start, bound_by) from last
            self.sleep(wait)
