"""Job checkpoints: how far a job got, durably, so a killed job resumes without loss or repeats.

A checkpoint is written only after the store has flushed every item up to its
``position`` (the watermark). Rows after the watermark may have been written
before a crash; re-writing them on resume is harmless because item ids map to
deterministic point ids. The dead-letter file is truncated back to the length
the checkpoint recorded, so bad rows after the watermark are not listed twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 1


@dataclass
class Checkpoint:
    """Durable progress of one job over one source with one engine configuration."""

    source: str
    """Fingerprint of the catalog (path, size, mtime): another catalog starts over."""
    engine: str
    """Signature of the models, channels and target: another configuration starts over."""
    position: int = 0
    """Every row at or before this position is durably indexed or dead-lettered."""
    indexed: int = 0
    failed: int = 0
    dead_letter_bytes: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    done: bool = False

    def matches(self, source: str, engine: str) -> bool:
        """Whether this checkpoint belongs to the same catalog and configuration."""
        return self.source == source and self.engine == engine


def signature(parts: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able description (engine config, target)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def job_files(folder: Path, source_path: Path) -> tuple[Path, Path]:
    """The checkpoint and the default dead-letter file of a catalog, inside a jobs folder."""
    key = hashlib.sha256(str(source_path.resolve()).encode()).hexdigest()[:12]
    stem = f"{source_path.name}.{key}"
    return folder / f"{stem}.checkpoint.json", folder / f"{stem}.dead-letter.jsonl"


def load(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or None if there is none or it is unreadable."""
    try:
        data = json.loads(path.read_text())
        if data.pop("format", None) != FORMAT:
            return None
        return Checkpoint(**data)
    except (OSError, ValueError, TypeError):
        return None


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write a checkpoint atomically (temp file, fsync, rename), so a kill leaves old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        json.dump({"format": FORMAT, **asdict(checkpoint)}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class DeadLetters:
    """Append-only JSONL of skipped rows, truncated back to a checkpoint on resume."""

    def __init__(self, path: Path, keep_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = path.open("a+b")
        self._fh.truncate(keep_bytes)
        self._fh.seek(keep_bytes)

    def write(self, position: int, item_id: str, reason: str, raw: str) -> None:
        """Record one skipped row: its position in the source, id when known, why, and the row."""
        line = json.dumps({"row": position, "id": item_id, "reason": reason, "raw": raw},
                          ensure_ascii=False)
        self._fh.write(line.encode() + b"\n")

    def sync(self) -> int:
        """Make written rows durable; returns the file's length for the checkpoint."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return self._fh.tell()

    def close(self) -> None:
        """Sync and close."""
        self.sync()
        self._fh.close()
