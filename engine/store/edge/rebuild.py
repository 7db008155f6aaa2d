"""EdgeStore's background index builds: copy the shard, optimize it in a child, swap.

``EdgeShard.optimize()`` holds the Python GIL for its whole run (measured:
14-20 s for 30k 256-d points with no other Python thread running), so on a
thread of the serving process it would stall every query.
EdgeStore therefore builds indexes by copy and swap (:class:`IndexBuilds`): it
copies the flushed shard to the next version directory, optimizes the copy in a
child process at lower priority, replays the writes made meanwhile and switches
the manifest to the copy atomically.

This file is also the child's program (:func:`main`). It imports only the
standard library and ``qdrant_edge`` and is started as a script in isolated mode
(``python -I``), so the child starts fast and does not depend on how the parent
found the ``engine`` package.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qdrant_edge import EdgeShard, UpdateOperation

if TYPE_CHECKING:  # not at run time: the child runs this file alone (see above)
    from engine.store.edge.data_dir import DataDir

logger = logging.getLogger(__name__)

CHILD_NICENESS = 10
"""How much the child lowers its CPU priority, so serving threads win the cores."""

_POLL_SECONDS = 0.05


class BuildFailed(RuntimeError):
    """The child process did not produce an optimized shard."""


class BuildCancelled(RuntimeError):
    """The build was stopped because the store is closing."""


def copy_shard(source: Path, target: Path) -> None:
    """Copy a flushed shard directory (it may stay open; writes must be paused meanwhile)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def child_command(shard_dir: Path) -> list[str]:
    """The command line that optimizes ``shard_dir`` in a child process."""
    return [sys.executable, "-I", str(Path(__file__).resolve()), str(shard_dir)]


def optimize_in_child(shard_dir: Path, cancel: threading.Event) -> None:
    """Run load + optimize + close of ``shard_dir`` in a child process and wait for it.

    Raises ``BuildCancelled`` (the child is terminated) when ``cancel`` is set,
    and ``BuildFailed`` with the child's stderr when it exits with an error.
    """
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            child_command(shard_dir), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        logger.info("optimizing %s in child process %d", shard_dir, process.pid)
        while True:
            try:
                returncode = process.wait(timeout=_POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if cancel.is_set():
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                    raise BuildCancelled(f"optimization of {shard_dir} was cancelled") from None
        if returncode != 0:
            stderr.seek(0)
            tail = stderr.read()[-4000:].decode("utf-8", "replace").strip()
            raise BuildFailed(
                f"child optimizing {shard_dir} exited with code {returncode}: {tail or 'no output'}"
            )


Install = Callable[[EdgeShard, Path], Callable[[], None]]
"""Makes a loaded shard the serving one (the caller holds the write lock) and returns a
function that retires the replaced shard once no query runs on it."""


class IndexBuilds:
    """Copy-and-swap HNSW builds of a store's shard, one at a time, on a background thread.

    A build: with writes paused, flush the serving shard, copy it to the next
    version dir and start logging writes (the store calls :meth:`record` for each
    one it applies); optimize the copy in a child process; load it and replay the
    log, most of it while writes go on and the rest with them paused; then
    ``install`` it. Any failure leaves the serving shard as it was, every write
    in it; only the unfinished copy is deleted.
    """

    def __init__(
        self,
        data_dir: DataDir,
        write_lock: threading.Lock,
        serving: Callable[[], tuple[EdgeShard, Path]],
        install: Install,
    ) -> None:
        self._dir = data_dir
        self._write_lock = write_lock
        self._serving = serving
        self._install = install
        self._lock = threading.Lock()  # guards _thread
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._log: list[UpdateOperation] | None = None  # writes since the copy

    @property
    def running(self) -> bool:
        """Whether a build (copy, child, replay, swap) is in progress."""
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def record(self, operation: UpdateOperation) -> None:
        """Log a write just applied to the serving shard; the caller holds the write lock."""
        if self._log is not None:
            self._log.append(operation)

    def start(self) -> threading.Thread:
        """Start a build, or return the running one; ``BuildCancelled`` after :meth:`stop`."""
        with self._lock:
            if self._cancel.is_set():
                raise BuildCancelled("the store is closed")
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="mmrec-optimize", daemon=True
                )
                self._thread.start()
            return self._thread

    def stop(self) -> None:
        """Cancel a running build (its child is terminated) and wait for it; no new ones."""
        self._cancel.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        """One build, from copy to retiring the replaced shard."""
        started = time.monotonic()
        target = self._copy()
        if target is None:
            return
        try:
            optimize_in_child(target, self._cancel)
            shard = EdgeShard.load(str(target))
        except BuildCancelled:
            logger.info("index build cancelled: the store is closing")
            self._abandon(target)
            return
        except Exception:
            logger.exception("index build failed; serving continues from the current shard")
            self._abandon(target)
            return
        retire = self._swap_in(shard, target)
        if retire is not None:
            retire()
            logger.info("index build done in %.1f s", time.monotonic() - started)

    def _copy(self) -> Path | None:
        """Flush and copy the serving shard with writes paused, then start the write log."""
        with self._write_lock:
            if self._cancel.is_set():
                return None
            shard, source = self._serving()
            target = self._dir.next_version(source)
            started = time.monotonic()
            try:
                shard.flush()
                copy_shard(source, target)
            except Exception:
                logger.exception("could not copy %s for an index build; not optimizing", source)
                shutil.rmtree(target, ignore_errors=True)
                return None
            self._log = []
        logger.info("copied %s to %s in %.2f s", source, target, time.monotonic() - started)
        return target

    def _abandon(self, target: Path) -> None:
        """Stop the write log and delete an unfinished copy."""
        with self._write_lock:
            self._log = None
        shutil.rmtree(target, ignore_errors=True)

    def _swap_in(self, shard: EdgeShard, target: Path) -> Callable[[], None] | None:
        """Replay the write log into the optimized shard and install it.

        Returns the retirement of the replaced shard, or ``None`` if the build was dropped.
        """
        log = self._log if self._log is not None else []
        try:
            done = _replay(shard, log, 0)  # the bulk, while writes go on
            with self._write_lock:
                if self._cancel.is_set():
                    raise BuildCancelled("the store closed before the swap")
                done = _replay(shard, log, done)  # the rest, with writes paused
                shard.flush()
                retire = self._install(shard, target)
                self._log = None
        except Exception as exc:
            if isinstance(exc, BuildCancelled):
                logger.info("index build dropped: %s", exc)
            else:
                logger.exception("could not swap in %s; the old shard keeps serving", target)
            with contextlib.suppress(Exception):
                shard.close()
            self._abandon(target)
            return None
        logger.info("now serving optimized shard %s (%d writes replayed)", target, done)
        return retire


def _replay(shard: EdgeShard, log: list[UpdateOperation], start: int) -> int:
    """Apply ``log[start:]`` (as long as it is now) to ``shard``; returns the new length."""
    end = len(log)
    for operation in log[start:end]:
        shard.update(operation)
    return end


def main(argv: list[str]) -> int:
    """Child entry point: at low priority, optimize the shard at ``argv[0]`` and close it."""
    if len(argv) != 1:
        raise SystemExit("usage: python -I rebuild.py SHARD_DIR")
    with contextlib.suppress(AttributeError, OSError):  # no nice() here, or not permitted
        os.nice(CHILD_NICENESS)
    shard = EdgeShard.load(argv[0])
    try:
        shard.optimize()
        shard.flush()
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
