"""Dynamic micro-batching: concurrent callers share one pass of a model or one store request.

The service answers each Search and Recommend on a lane thread (``engine.service.lanes``).
Alone, every query pays a whole forward pass per encoder (``engine.encoders.vectoriser``)
and a whole store request (``engine.store.batched``), and concurrent passes only fight over
the same cores; a text-embedding server instead queues the requests and runs them as one
batch. :class:`MicroBatcher` does that for any
``forward(list of inputs) -> rows`` with threads only (no event loop, no thread of its
own): each caller blocks in :meth:`MicroBatcher.__call__`, and the oldest waiting caller
runs the forward pass for its batch on its own thread, then hands every caller its row.

**When a batch starts.** One forward pass runs at a time; callers that arrive meanwhile
queue, and the next batch takes the oldest ``max_batch`` of them. A batch starts when it
is full, or when its oldest caller has waited ``window`` seconds since it arrived, or at
the earliest deadline among its callers, whichever comes first. A caller that arrives
while nothing is queued or running starts at once: a request alone never pays the
window, and under load the queue fills while the previous pass runs, so the window only
tops up a batch with callers that are about to arrive.

**Deadlines** bound the window only: once a batch starts, its callers wait for its pass
(as they would for their own), and a caller queued behind a running pass waits for it.

**Errors.** An exception of a forward pass (or a pass that returns the wrong number of
rows) is raised in every caller of that batch, as ``concurrent.futures.Future.result``
does; the batcher is left idle and serves the next batch normally.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Generic, TypeVar, cast

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(eq=False)
class _Call(Generic[In, Out]):
    """One caller's input and, once its batch ran, its row or the batch's error."""

    value: In
    start_by: float
    """``time.monotonic()`` by which its batch starts: arrival + window (arrival if alone),
    or its deadline when that is sooner."""
    done: bool = False
    row: Out | None = None
    error: BaseException | None = None

    def outcome(self) -> Out:
        """Its row, or the exception of its batch's forward pass raised here."""
        if self.error is not None:
            raise self.error
        return cast(Out, self.row)


class MicroBatcher(Generic[In, Out]):
    """Runs ``forward`` on batches of the inputs that concurrent callers pass one at a time.

    ``forward`` takes a non-empty list and returns one row per input, in order (a list,
    or an array whose first axis is the batch). Thread-safe; see the module docstring
    for when a batch starts.
    """

    def __init__(self, forward: Callable[[list[In]], Sequence[Out]], *, window_ms: float,
                 max_batch: int) -> None:
        if window_ms < 0 or max_batch < 1:
            raise ValueError(f"need window_ms >= 0 and max_batch >= 1, not {window_ms} and "
                             f"{max_batch}")
        self._forward = forward
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: deque[_Call[In, Out]] = deque()
        self._busy = False
        self._sizes: dict[int, int] = {}

    def __call__(self, value: In, *, deadline: float | None = None) -> Out:
        """``forward([value, ...])``'s row for ``value``, computed in a batch with the
        inputs of concurrent callers; ``deadline`` (``time.monotonic()``) bounds how long
        the batch may wait for more callers."""
        call = self._enqueue(value, deadline)
        batch = self._await_turn(call)
        if batch is not None:
            self._run(batch)
        return call.outcome()

    @property
    def queued(self) -> int:
        """Callers waiting for a batch to start (not those whose pass is running)."""
        with self._cond:
            return len(self._queue)

    def batch_sizes(self) -> dict[int, int]:
        """How many forward passes ran with each batch size so far (for metrics)."""
        with self._cond:
            return dict(self._sizes)

    def _enqueue(self, value: In, deadline: float | None) -> _Call[In, Out]:
        """Queue a caller; alone (nothing queued or running) it may start at once."""
        with self._cond:
            now = time.monotonic()
            alone = not self._busy and not self._queue
            start_by = now if alone else now + self.window
            if deadline is not None:
                start_by = min(start_by, deadline)
            call: _Call[In, Out] = _Call(value, start_by)
            self._queue.append(call)
            self._cond.notify_all()  # a batch waiting to fill, or for this deadline, rechecks
            return call

    def _await_turn(self, call: _Call[In, Out]) -> list[_Call[In, Out]] | None:
        """Wait until ``call`` is answered (None) or heads the queue while no pass runs;
        then wait out its batch's window and take the batch (``call`` is its first)."""
        with self._cond:
            try:
                while not call.done:
                    if self._busy or self._queue[0] is not call:
                        self._cond.wait()
                        continue
                    remaining = self._start_time() - time.monotonic()
                    if len(self._queue) >= self.max_batch or remaining <= 0:
                        count = min(len(self._queue), self.max_batch)
                        batch = [self._queue.popleft() for _ in range(count)]
                        self._busy = True
                        return batch
                    self._cond.wait(remaining)
            except BaseException:  # interrupted while queued: leave, so no one waits on us
                if not call.done and call in self._queue:
                    self._queue.remove(call)
                    self._cond.notify_all()
                raise
        return None

    def _start_time(self) -> float:
        """When the batch at the head of the queue must start: its earliest ``start_by``."""
        return min(call.start_by for call in islice(self._queue, self.max_batch))

    def _run(self, batch: list[_Call[In, Out]]) -> None:
        """One forward pass for ``batch``, outside the lock; then answer every caller in it."""
        rows: Sequence[Out] = ()
        error: BaseException | None = None
        try:
            rows = self._forward([call.value for call in batch])
            if len(rows) != len(batch):
                error = RuntimeError(f"a batched forward pass returned {len(rows)} rows for "
                                     f"{len(batch)} inputs")
        except BaseException as exc:  # every caller of the batch gets it, then re-raises it
            error = exc
        with self._cond:
            for i, call in enumerate(batch):
                call.done = True
                if error is None:
                    call.row = rows[i]
                else:
                    call.error = error
            self._sizes[len(batch)] = self._sizes.get(len(batch), 0) + 1
            self._busy = False
            self._cond.notify_all()
