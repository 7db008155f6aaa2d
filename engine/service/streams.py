"""Reading a client stream (UpsertItems, RecordEvents) within the limits of ``[service.limits]``.

Two bounds keep one stream from holding the server's resources:

- ``stream_idle_seconds``: a stream that sends nothing for that long is no longer
  read. The call still answers normally with what it stored and rejected, since every
  message that arrived was handled, and the trailing metadata says
  ``mmrec-stream-end: idle``, so the client knows why its later writes fail.
- ``max_stream_messages``: the message at that index is not read. It is reported as
  rejected, saying that it and everything after it must go in a new stream, and the
  trailing metadata says ``mmrec-stream-end: length``. Nothing is dropped unreported:
  the client knows exactly where to resume.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from engine.config import LimitsSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

END_METADATA = "mmrec-stream-end"
"""Trailing metadata key set when the server stopped reading a stream early."""


@dataclass(frozen=True, slots=True)
class Unread:
    """The first message of a stream that was not read (past ``max_stream_messages``)."""

    reason: str

    def __str__(self) -> str:
        return self.reason


class StreamReader(Generic[T]):
    """Index-numbered messages of a client stream, read within the stream limits.

    ``ended`` is None when the client closed the stream, else ``"idle"`` or ``"length"``.
    """

    def __init__(self, messages: AsyncIterator[T], limits: LimitsSettings) -> None:
        self._messages = messages
        self._idle = limits.stream_idle_seconds
        self._max = limits.max_stream_messages
        self.ended: str | None = None

    async def __aiter__(self) -> AsyncIterator[tuple[int, T | Unread]]:
        """``(index, message)`` pairs; the last is ``(max, Unread)`` if the stream ran too long."""
        iterator = aiter(self._messages)
        index = 0
        while True:
            try:
                message = await asyncio.wait_for(anext(iterator), self._idle)
            except StopAsyncIteration:
                return
            except TimeoutError:
                self.ended = "idle"
                log.info("stopped reading a stream idle for %.0f s after %d messages",
                         self._idle, index)
                return
            if index >= self._max:
                self.ended = "length"
                yield index, Unread(
                    f"the stream reached the limit of {self._max:,} messages: this message "
                    f"(index {index}) and every later one were not read; send them in a new "
                    "stream")
                return
            yield index, message
            index += 1

    def trailer(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata for the response: why reading stopped early, if it did."""
        return ((END_METADATA, self.ended),) if self.ended else ()
