"""EdgeStore's data dir: the lock, the manifest (pointer file) and the shard versions.

Layout of a data dir::

    DATA_DIR/.lock            flock held by the one process that owns the data dir
    DATA_DIR/manifest.json    schema + name of the current shard version (the pointer file)
    DATA_DIR/shard-000007/    the current qdrant-edge shard
    DATA_DIR/users/           the users shard, a data dir of its own (engine.store.edge.users)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
VERSION_PREFIX = "shard-"


class DataDirInUse(RuntimeError):
    """Another process (or store object) holds the data dir's lock; ``holder`` is its pid."""

    def __init__(self, root: Path, holder: str) -> None:
        super().__init__(f"data dir {root} is locked by pid {holder or 'unknown'}")
        self.holder = holder


class DataDir:
    """The on-disk bookkeeping of one data dir, locked for this object's lifetime.

    The lock is an ``flock`` on ``.lock``: it conflicts between processes and
    between two opens in one process, and the kernel drops it if we die.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise DataDirInUse(root, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd: int | None = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest as JSON, or ``None`` for a new data dir (``ValueError`` if garbled)."""
        path = self.root / MANIFEST_NAME
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path} does not hold a JSON object")
        return data

    def write_manifest(self, data: dict[str, Any]) -> None:
        """Replace the manifest atomically: temp file, fsync, ``os.replace``, fsync of the dir."""
        temp = self.root / f"{MANIFEST_NAME}.tmp"
        with temp.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.root / MANIFEST_NAME)
        with contextlib.suppress(OSError):  # the rename's durability; best effort by design
            dir_fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def first_version(self) -> Path:
        """The directory of a data dir's first shard (removed if a crash left it behind)."""
        path = self.root / f"{VERSION_PREFIX}{1:06d}"
        if path.exists():
            shutil.rmtree(path)
        return path

    def next_version(self, current: Path) -> Path:
        """The directory after ``shard-000007``: ``shard-000008``."""
        number = int(current.name.removeprefix(VERSION_PREFIX)) + 1
        return self.root / f"{VERSION_PREFIX}{number:06d}"

    def remove_stale(self, keep: Path) -> None:
        """Delete shard versions other than ``keep`` and any half-written manifest."""
        for entry in self.root.iterdir():
            if entry.name.startswith(VERSION_PREFIX) and entry != keep and entry.is_dir():
                logger.info("removing stale shard version %s", entry)
                shutil.rmtree(entry, ignore_errors=True)
        (self.root / f"{MANIFEST_NAME}.tmp").unlink(missing_ok=True)
