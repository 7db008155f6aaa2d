"""The users shard's own write-ahead log (see ``engine.store.edge.users`` for why)."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qdrant_edge import EdgeShard, Point, UpdateOperation

if TYPE_CHECKING:
    from qdrant_edge import NamedVector  # only in qdrant-edge's stub: what Point's dict holds

logger = logging.getLogger(__name__)


class Journal:
    """The users' write-ahead log: one JSON line per put or delete since the last flush.

    qdrant-edge's WAL cannot be emptied on demand; this one is truncated (and the
    truncation fsynced) whenever the shard has been flushed, so it never holds a
    deleted user after :meth:`EdgeUserStore.delete`. Lines are written with one
    ``write`` each and not fsynced: an acknowledged write survives a crash of the
    process (the line is in the OS page cache), and power loss once the next
    flush ran, the same guarantee as qdrant's WAL, which does not fsync per write
    either. Entries are whole-user upserts and deletes, so replaying a journal
    over a shard that already holds some of them gives the same users.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self._fd).st_size

    def entries(self) -> list[dict[str, Any]]:
        """The entries to replay, oldest first; stops at a torn or garbled line (logged)."""
        lines = self.path.read_bytes().split(b"\n")
        found: list[dict[str, Any]] = []
        for number, line in enumerate(lines[:-1], start=1):
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or entry.get("op") not in ("put", "delete"):
                    raise ValueError("not a journal entry")
            except ValueError as exc:
                logger.warning("users journal %s: line %d is unreadable (%s); replaying the "
                               "%d entries before it", self.path, number, exc, len(found))
                return found
            found.append(entry)
        if lines[-1]:
            logger.warning("users journal %s ends in a torn line (a crash while writing an "
                           "unacknowledged write); ignoring it", self.path)
        return found

    def append(self, entry: Mapping[str, Any]) -> None:
        """Add one entry (a single ``write``, so a crash leaves at most a torn last line)."""
        line = json.dumps(entry, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        data = memoryview(line)
        while data:
            data = data[os.write(self._descriptor(), data):]
        self.size += len(line)

    def clear(self) -> None:
        """Empty the journal for good (the shard holds every entry now)."""
        fd = self._descriptor()
        os.ftruncate(fd, 0)
        os.fsync(fd)
        self.size = 0

    def close(self) -> None:
        """Close the file (idempotent); its content stays for the next open to replay."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _descriptor(self) -> int:
        if self._fd is None:
            raise ValueError(f"the users journal {self.path} is closed")
        return self._fd


def put_entry(point_id: str, vectors: Mapping[str, Sequence[float]],
              payload: Mapping[str, Any]) -> dict[str, Any]:
    """A put entry; vectors as base64 float32 (exact, and ~80x cheaper than JSON floats)."""
    return {"op": "put", "id": point_id, "payload": payload,
            "f32": {name: base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()
                    for name, values in vectors.items()}}


def entry_vectors(entry: Mapping[str, Any]) -> dict[str, NamedVector]:
    """The dense vectors of a put entry (base64 float32, or JSON lists in entries before
    2026-11-30)."""
    if "f32" in entry:
        return {name: np.frombuffer(base64.b64decode(text), dtype="<f4").tolist()
                for name, text in entry["f32"].items()}
    return dict(entry["vectors"])


def replay(shard: EdgeShard, entries: list[dict[str, Any]]) -> None:
    """Apply journal entries to the shard in order."""
    for entry in entries:
        if entry["op"] == "put":
            point = Point(entry["id"], entry_vectors(entry), dict(entry["payload"]))
            shard.update(UpdateOperation.upsert_points([point]))
        else:
            shard.update(UpdateOperation.delete_points([entry["id"]]))
