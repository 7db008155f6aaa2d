"""Per-stage wall times of one request, and the hook that lets tracing see each stage.

The search pipeline and the recommender time their stages (``encode``, ``retrieve``,
``rerank``, ``explain``, ...) with a :class:`StageTimer` and return the milliseconds in the
result (``SearchResult.stage_ms``), so a caller, the metrics and a web page read the same
numbers. Tracing plugs in through :data:`STAGE_OBSERVER`, a context variable the service
sets for a call (it is carried into the worker thread with the call's context): when set,
each stage also runs inside what it returns (a span), and no layer below the service needs
to know about OpenTelemetry.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar

StageObserver = Callable[[str], AbstractContextManager[object]]
"""Given a stage's name, a context manager the stage runs in (e.g. a tracing span)."""

STAGE_OBSERVER: ContextVar[StageObserver | None] = ContextVar("mmrec_stage_observer",
                                                              default=None)
"""Set by the service for a call that is traced; None: stages are only timed."""


class StageTimer:
    """Milliseconds per named stage (a dict in the order the stages first ran).

    A stage entered twice adds up. The times are wall times of the stage's own work, so
    their sum never exceeds the request's.
    """

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (inside the observer's context, when one is set)."""
        observer = STAGE_OBSERVER.get()
        with observer(name) if observer is not None else contextlib.nullcontext():
            start = time.perf_counter()
            try:
                yield
            finally:
                elapsed = (time.perf_counter() - start) * 1000.0
                self.ms[name] = self.ms.get(name, 0.0) + elapsed
