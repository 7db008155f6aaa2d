"""Admission control: blocking work runs in lanes, each a thread pool with a bounded queue.

The service has two lanes. Requests that use the LLM (re-ranking, written
reasons) are slow on a CPU, so they get their own few threads; plain searches,
recommendations, writes and reads keep theirs, and health checks run on the
event loop and need none. A lane counts the calls submitted and not yet
finished (running or waiting for a thread); past ``workers + max_queued`` a new
call is refused at once with :class:`~engine.domain.Overloaded`
(RESOURCE_EXHAUSTED), rather than queueing without bound behind slow ones.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from engine.domain import Overloaded

T = TypeVar("T")


class Lane:
    """A named thread pool that admits at most ``workers + max_queued`` unfinished calls."""

    def __init__(self, name: str, workers: int, max_queued: int) -> None:
        self.name = name
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"mmrec-{name}")
        self.limit = workers + max_queued
        self.unfinished = 0
        """Calls submitted whose thread work has not ended (read and written on the loop)."""

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None) -> T:
        """``fn(*args)`` on a thread of this lane, awaited for at most ``timeout`` seconds.

        A call that times out is no longer awaited but still counts until its
        thread is done, so the bound is on real work, not on waiting callers.
        """
        if self.unfinished >= self.limit:
            raise Overloaded(f"the server is busy: {self.unfinished} {self.name} requests are "
                             f"running or queued (limit {self.limit}); retry after a backoff")
        loop = asyncio.get_running_loop()
        self.unfinished += 1
        # The call's context variables (request id, tracing span) go with it to the thread.
        future: Future[T] = self.pool.submit(contextvars.copy_context().run, fn, *args)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._finished))
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=timeout)

    def _finished(self) -> None:
        self.unfinished -= 1

    def close(self) -> None:
        """Stop the threads after the calls in flight finish."""
        self.pool.shutdown(wait=True)
