"""The bulk indexing pipeline: read -> validate -> prepare (worker pool) -> encode -> write.

Three threads and a worker pool overlap the stages so the encoders never wait
for I/O: a reader parses and validates rows and hands image work to the pool,
the calling thread batches prepared rows in source order and encodes them, and
a writer upserts, dead-letters bad rows and checkpoints. Bounded queues between
them keep memory flat and let a slow stage hold the others back.

Guarantees: a bad row is dead-lettered with its position and reason and the job
goes on; every good row ends up stored exactly once, also across a kill at any
moment and a resume (see ``indexers.checkpoint``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from engine.domain import MmrecError
from indexers import checkpoint as cp
from indexers.catalog import row_to_record
from indexers.sources import CatalogSource, SourceRow
from indexers.targets import Prepared, Target

log = logging.getLogger(__name__)

T = TypeVar("T")
STAGES = ("read", "prepare", "encode", "write")


@dataclass(frozen=True)
class JobOptions:
    """Knobs of a job; the defaults suit a 2-core machine and a CPU encoder."""

    batch_size: int = 64
    """Items per encoder forward pass (set the engine's encoder batch sizes to match)."""
    group_batches: int = 8
    """Batches handed to the encoders at once: they sort a group by text length before
    batching, which cuts padding (MovieLens titles: ~1.4x faster than batches in catalog
    order). Memory: up to batch_size * group_batches decoded images (<= 512 px) in flight."""
    workers: int = 2
    """Threads that fetch, decode and shrink images."""
    prefetch_batches: int = 4
    """Batches allowed in flight between stages (memory bound)."""
    checkpoint_seconds: float = 5.0
    """At most this long between checkpoints (each costs a store flush)."""
    restart: bool = False
    """Ignore an existing checkpoint and index the whole catalog again."""
    progress: bool = True


@dataclass
class JobSummary:
    """What a job did: counts, time, and busy seconds per stage."""

    indexed: int = 0
    failed: int = 0
    seconds: float = 0.0
    resumed_from: int = 0
    already_done: bool = False
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stage_items: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    finish_seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    dead_letter: Path | None = None
    store_count: int | None = None
    ray_workers: int = 0
    """Actors of a Ray run (``mmrec index --ray``); 0 for the single-process job."""
    startup_seconds: float = 0.0
    """Of ``seconds``, the time a Ray run took to its first batch back: starting or joining
    Ray, the actors opening their targets (loading the encoders), one batch."""

    @property
    def items_per_second(self) -> float:
        """Rows handled (indexed or dead-lettered) in this run per wall-clock second."""
        handled = self.stage_items["write"]
        return handled / self.seconds if self.seconds else 0.0

    def stage_rates(self) -> dict[str, float]:
        """Items per busy second of each stage (a stage far above the others is not the limit)."""
        return {s: (self.stage_items[s] / sec if sec else 0.0)
                for s, sec in self.stage_seconds.items()}


@dataclass
class _Unit:
    """One batch on its way to the writer: encoded items, bad rows, and the watermark."""

    encoded: list[Any]
    rows: list[SourceRow]
    """Source rows of ``encoded``, aligned."""
    bad: list[tuple[SourceRow, str, str]]
    """(row, item id, reason) of rows rejected before writing."""
    position: int


class _Failed(Exception):
    """Another stage failed; its error is re-raised by the caller."""


def resume_state(source: CatalogSource, target: Target, checkpoint_file: Path, *,
                 restart: bool, summary: JobSummary) -> cp.Checkpoint | None:
    """The checkpoint to resume from, a fresh one, or None when this job is already done.

    A checkpoint counts only for the same catalog and the same target signature (models,
    channels, destination, fetch policy); its counts and position go into ``summary`` (for a
    job already done: ``already_done`` and the store's count). Shared by the single-process
    job and the Ray job, whose checkpoints mean the same thing.
    """
    fingerprint, engine = source.fingerprint(), cp.signature(target.signature())
    state = None if restart else cp.load(checkpoint_file)
    if state is not None and state.matches(fingerprint, engine):
        if state.done:
            log.info("%s is already indexed with this configuration (checkpoint %s); "
                     "nothing to do. Use --restart to index it again.", source.path,
                     checkpoint_file)
            summary.already_done, summary.store_count = True, target.count()
            return None
        log.info("resuming after row %d (%d indexed, %d failed so far)", state.position,
                 state.indexed, state.failed)
        summary.indexed, summary.failed = state.indexed, state.failed
        summary.reasons = dict(state.reasons)
    else:
        if state is not None:
            log.info("the catalog or the configuration changed since checkpoint %s: "
                     "indexing from the start", checkpoint_file)
        state = cp.Checkpoint(source=fingerprint, engine=engine)
    summary.resumed_from = state.position
    return state


def finish_job(target: Target, state: cp.Checkpoint, checkpoint_file: Path,
               summary: JobSummary, started: float) -> JobSummary:
    """The end of a job whose every row is stored or dead-lettered: the target's final
    flush and index build, the checkpoint marked done, the summary's times and count."""
    finished = time.perf_counter()
    target.finish()
    summary.finish_seconds = time.perf_counter() - finished
    state.done = True
    cp.save(checkpoint_file, state)
    summary.seconds = time.perf_counter() - started
    summary.store_count = target.count()
    return summary


def reason_key(reason: str) -> str:
    """The part of a reason the summary counts rows by (the text before ':')."""
    return reason.split(":")[0][:60]


class IndexJob:
    """One run of the pipeline over one source into one target."""

    def __init__(self, source: CatalogSource, target: Target, *, checkpoint_file: Path,
                 dead_letter: Path, options: JobOptions | None = None) -> None:
        self.source = source
        self.target = target
        self.checkpoint_file = checkpoint_file
        self.dead_letter = dead_letter
        self.options = options or JobOptions()
        self.summary = JobSummary(dead_letter=dead_letter)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def _timed(self, stage: str, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.summary.stage_seconds[stage] += time.perf_counter() - started

    def _count(self, stage: str, n: int) -> None:
        with self._lock:
            self.summary.stage_items[stage] += n

    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        """Put, waking up to notice a failure elsewhere instead of blocking forever."""
        while True:
            if self._stop.is_set():
                raise _Failed
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue[Any]) -> Any:
        while True:
            if self._stop.is_set():
                raise _Failed
            try:
                return q.get(timeout=0.2)
            except queue.Empty:
                continue

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._stop.set()

    # ---------------------------------------------------------------------- run
    def run(self) -> JobSummary:
        """Run (or resume) the job to the end; re-raises a failure of the target or source."""
        started = time.perf_counter()
        state = resume_state(self.source, self.target, self.checkpoint_file,
                             restart=self.options.restart, summary=self.summary)
        if state is None:
            return self.summary
        letters = cp.DeadLetters(self.dead_letter, state.dead_letter_bytes)
        depth = self.options.batch_size * self.options.prefetch_batches
        rows: queue.Queue[Any] = queue.Queue(depth)
        units: queue.Queue[Any] = queue.Queue(self.options.prefetch_batches)
        pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="mmrec-prepare")
        bar = tqdm(total=self.source.estimate_rows(), initial=state.position, unit="row",
                   desc="indexing", disable=not self.options.progress, dynamic_ncols=True,
                   smoothing=0.1)
        reader = threading.Thread(target=self._guard, args=(self._read, state.position, rows,
                                                            pool), name="mmrec-read")
        writer = threading.Thread(target=self._guard, args=(self._write, units, state, letters,
                                                            bar), name="mmrec-write")
        reader.start()
        writer.start()
        try:
            self._guard(self._encode, rows, units, state.position)
        finally:
            writer.join()
            self._stop.set()
            reader.join()
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            letters.close()
        if self._error is not None:
            raise self._error
        return finish_job(self.target, state, self.checkpoint_file, self.summary, started)

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except _Failed:
            pass
        except BaseException as exc:
            self._fail(exc)

    # ------------------------------------------------------------------- stages
    def _read(self, start_after: int, rows: queue.Queue[Any], pool: ThreadPoolExecutor) -> None:
        """Parse and validate rows in order; image work goes to the pool."""
        iterator = iter(self.source.rows(start_after))
        while True:
            started = time.perf_counter()
            row = next(iterator, None)
            if row is None:
                break
            work: Future[Prepared] | str
            if row.fields is None:
                work = row.error
            else:
                try:
                    record = row_to_record(row.fields)
                    work = pool.submit(self._timed, "prepare", self.target.prepare, record,
                                       self.source.base_dir)
                except MmrecError as exc:
                    work = str(exc)
            with self._lock:
                self.summary.stage_seconds["read"] += time.perf_counter() - started
                self.summary.stage_items["read"] += 1
            self._put(rows, (row, work))
        self._put(rows, None)

    def _encode(self, rows: queue.Queue[Any], units: queue.Queue[Any], position: int) -> None:
        """Collect prepared rows in source order into groups, encode, pass to the writer."""
        batch: list[Prepared] = []
        batch_rows: list[SourceRow] = []
        bad: list[tuple[SourceRow, str, str]] = []
        group = self.options.batch_size * self.options.group_batches
        while True:
            entry = self._get(rows)
            if entry is not None:
                row, work = entry
                position = row.position
                if isinstance(work, str):
                    bad.append((row, str((row.fields or {}).get("id", "")), work))
                else:
                    try:
                        batch.append(work.result())
                        batch_rows.append(row)
                    except MmrecError as exc:
                        bad.append((row, str((row.fields or {}).get("id", "")), str(exc)))
                    self._count("prepare", 1)
                if len(batch) < group and len(bad) < group:
                    continue
            if batch:
                encoded, rejected = self._timed("encode", self.target.encode, batch)
                self._count("encode", len(batch))
                dropped = {i for i, _ in rejected}
                bad.extend((batch_rows[i], batch[i].record.id, reason) for i, reason in rejected)
                kept_rows = [r for i, r in enumerate(batch_rows) if i not in dropped]
                self._put(units, _Unit(encoded, kept_rows, bad, position))
            elif bad or entry is None:
                self._put(units, _Unit([], [], bad, position))
            batch, batch_rows, bad = [], [], []
            if entry is None:
                self._put(units, None)
                return

    def _write(self, units: queue.Queue[Any], state: cp.Checkpoint, letters: cp.DeadLetters,
               bar: tqdm) -> None:
        """Store batches, dead-letter bad rows, and checkpoint after a flush."""
        last_checkpoint = time.monotonic()
        reasons = Counter(state.reasons)
        while True:
            unit = self._get(units)
            if unit is None:
                break
            rejected = self._timed("write", self.target.write, unit.encoded) if unit.encoded \
                else []
            dropped = {i for i, _ in rejected}
            bad = unit.bad + [(unit.rows[i], str(unit.rows[i].fields.get("id", "")), reason)
                              for i, reason in rejected if unit.rows[i].fields is not None]
            bad.sort(key=lambda entry: entry[0].position)
            for row, item_id, reason in bad:
                letters.write(row.position, item_id, reason, row.raw)
                reasons[reason_key(reason)] += 1
            stored = len(unit.encoded) - len(dropped)
            state.indexed += stored
            state.failed += len(bad)
            self._count("write", stored + len(bad))
            bar.update(max(0, unit.position - state.position))
            bar.set_postfix(indexed=state.indexed, failed=state.failed, refresh=False)
            state.position = unit.position
            state.reasons = dict(reasons)
            with self._lock:
                self.summary.indexed, self.summary.failed = state.indexed, state.failed
                self.summary.reasons = dict(reasons)
            if time.monotonic() - last_checkpoint >= self.options.checkpoint_seconds:
                self._checkpoint(state, letters)
                last_checkpoint = time.monotonic()
        self._checkpoint(state, letters)

    def _checkpoint(self, state: cp.Checkpoint, letters: cp.DeadLetters) -> None:
        """Flush the target, then record the watermark (never the other way round)."""
        self._timed("write", self.target.flush)
        state.dead_letter_bytes = letters.sync()
        cp.save(self.checkpoint_file, state)
