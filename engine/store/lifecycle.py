"""What every store (items or users, embedded or server) has in common: flush, close, say what
backs it, and work as a ``with`` block."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class StoreLifecycle(abc.ABC):
    """Durability and release of a store; the one place the context-manager protocol lives."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every acknowledged write durable on disk."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (files, locks, connections); calling it again does nothing."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """One line saying what backs this store, for ``mmrec info``."""

    def reachable(self) -> bool:
        """Whether the store answers now: one cheap call, never retried (the service's health
        probe). An embedded store lives in this process, so it always does."""
        return True

    def __enter__(self) -> Self:
        """Use the store in a ``with`` block that closes it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store when the ``with`` block ends."""
        self.close()
