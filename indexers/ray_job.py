"""The bulk indexing job on Ray Data: ``mmrec index --ray [--workers N] [--ray-address ADDR]``.

What runs where:

- **driver** (the ``mmrec index`` process): starts Ray (local, ``num_cpus = workers``) or
  joins a cluster, opens its own handle on the target for the checkpoint signature, the
  final count and the index build, and consumes the outcomes: it alone writes the
  checkpoint and the dead-letter file.
- **read** (one streaming Ray task on the driver's node, ``indexers.ray_stages``): the
  ordinary catalog readers, rows cut into chunks numbered 0, 1, ... in source order.
- **index** (``map_batches`` with an actor pool of N): each actor opens the target once
  (a Qdrant server store: the engine's encoders are loaded once per actor; a service:
  one gRPC channel) and prepares, encodes and writes batches in parallel.

Only shared targets work: a Qdrant server (``store.url``) or a running service
(``--service``). The embedded store is locked by one process; run ``mmrec serve`` on it and
index through ``--service``, which makes the service the single writer.

Exactly once, and resume: a row's outcome comes back only after the target acknowledged
its batch. Batches finish out of order, so the checkpoint records the **contiguous prefix**
of complete chunks: its ``position`` means what the single-process job's does (every row up
to it is stored or dead-lettered), and either job can resume the other's checkpoint. Chunks
that finished past the prefix are redone by a resumed run; item ids are point ids, so the
repeat replaces and never duplicates. Bad rows are held until the prefix covers them and
then written in source order, so the dead-letter file lists each exactly once. A failure of
the target or the source stops the job after checkpointing the prefix reached.

Differences from the single-process job: when one catalog holds the same id twice, which
row wins is not defined (two actors may write them in either order; the single-process job
keeps the later one). The target's options (``--api-key`` included) travel to the actors.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import domain
from engine.domain import FailedPrecondition, MmrecError, Unavailable
from indexers import checkpoint as cp
from indexers.pipeline import JobOptions, JobSummary, finish_job, reason_key, resume_state
from indexers.sources import CatalogSource
from indexers.targets import Target, TargetFactory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where a Ray run happens and how wide it is."""

    workers: int = 2
    """Indexing actors (each one CPU, one target, one copy of the encoders)."""
    address: str | None = None
    """A Ray cluster to join (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None starts a
    local Ray with ``num_cpus = workers``. A Ray already started in this process is used."""


@dataclass(frozen=True)
class ChunkOutcome:
    """What became of one chunk: where it ends, how many rows were stored, the bad rows."""

    chunk: int
    end: int
    stored: int
    bad: list[tuple[int, str, str, str]]
    """(position, item id, reason, raw row) of each refused row."""
    last: bool = False
    """The empty marker after the final chunk."""


class ChunkLedger:
    """Chunk outcomes, in any order, turned into the contiguous prefix a checkpoint covers."""

    def __init__(self, state: cp.Checkpoint, letters: cp.DeadLetters) -> None:
        self.state = state
        self.letters = letters
        self.reasons = Counter(state.reasons)
        self.next = 0
        """The first chunk the prefix does not cover yet."""
        self.waiting: dict[int, ChunkOutcome] = {}
        self.finished = False
        """Whether the prefix reached the last chunk."""

    def add(self, outcome: ChunkOutcome) -> None:
        """Record one chunk's outcome (a chunk comes back once, or the job stops)."""
        if outcome.chunk < self.next or outcome.chunk in self.waiting:
            raise RuntimeError(f"chunk {outcome.chunk} came back twice")
        self.waiting[outcome.chunk] = outcome

    def advance(self) -> bool:
        """Move the prefix over every chunk that is done; dead-letter their bad rows in
        source order. Returns whether it moved."""
        moved = False
        while (outcome := self.waiting.pop(self.next, None)) is not None:
            for position, item_id, reason, raw in sorted(outcome.bad):
                self.letters.write(position, item_id, reason, raw)
                self.reasons[reason_key(reason)] += 1
            self.state.position = outcome.end
            self.state.indexed += outcome.stored
            self.state.failed += len(outcome.bad)
            self.state.reasons = dict(self.reasons)
            self.finished = outcome.last
            self.next += 1
            moved = True
        return moved

    def check_complete(self) -> None:
        """After the last outcome: every chunk must be back (a missing one is lost rows)."""
        if not self.finished or self.waiting:
            raise RuntimeError(f"chunk {self.next} never came back (chunks after it did: "
                               f"{sorted(self.waiting)}); the checkpoint stays before it")


def outcomes(batch: Mapping[str, np.ndarray]) -> Iterator[ChunkOutcome]:
    """The chunk outcomes in one output batch of the actors; raises the first failure."""
    for i, kind in enumerate(batch["fatal_kind"]):
        if kind:
            raise domain_error(str(kind), str(batch["fatal"][i]))
    for i, chunk in enumerate(batch["chunk"]):
        yield ChunkOutcome(int(chunk), int(batch["end"][i]), int(batch["stored"][i]),
                           pickle.loads(batch["bad"][i]), bool(batch["last"][i]))


def domain_error(kind: str, message: str) -> MmrecError:
    """The domain error an actor or the read task reported by class name (else Unavailable)."""
    cls = getattr(domain, kind, None)
    if isinstance(cls, type) and issubclass(cls, MmrecError):
        return cls(message)
    if kind in ("OSError", "FileNotFoundError", "PermissionError"):
        return Unavailable(f"reading the catalog failed: {message}")
    return Unavailable(f"{kind}: {message}")


@contextlib.contextmanager
def ray_session(options: RayOptions, progress: bool) -> Iterator[None]:
    """Ray started (or joined) for the job and shut down after, unless it was already up.

    Ray Data's own progress bars follow ``progress``.
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise FailedPrecondition("--ray needs Ray Data: pip install 'mmrec[ray]' "
                                 f"({exc})") from exc
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=options.address, include_dashboard=False,
                     num_cpus=None if options.address else options.workers,
                     logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = options.address or "a local Ray"
            raise Unavailable(f"cannot start or join {where}: {exc}") from exc
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars = context.print_on_execution_start = progress
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
        if started_here:
            ray.shutdown()


class RayIndexJob:
    """One run of the job on Ray Data, over one source into one shared target."""

    def __init__(self, source: CatalogSource, target: Target, targets: TargetFactory, *,
                 checkpoint_file: Path, dead_letter: Path, options: JobOptions | None = None,
                 ray: RayOptions | None = None) -> None:
        """``target`` is the driver's handle (signature, flush, count, finish); ``targets``
        opens each actor's own (pickled to the actors)."""
        self.source = source
        self.target = target
        self.targets = targets
        self.checkpoint_file = checkpoint_file
        self.dead_letter = dead_letter
        self.options = options or JobOptions()
        self.ray = ray or RayOptions()
        self.summary = JobSummary(dead_letter=dead_letter, ray_workers=self.ray.workers)
        self._started = 0.0

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk and per actor call: one encoder group of the single-process job."""
        return self.options.batch_size * self.options.group_batches

    def run(self) -> JobSummary:
        """Run (or resume) the job to the end; re-raises a failure of the target or source."""
        started = self._started = time.perf_counter()
        state = resume_state(self.source, self.target, self.checkpoint_file,
                             restart=self.options.restart, summary=self.summary)
        if state is None:
            return self.summary
        letters = cp.DeadLetters(self.dead_letter, state.dead_letter_bytes)
        ledger = ChunkLedger(state, letters)
        try:
            with ray_session(self.ray, self.options.progress):
                self._consume(self._dataset(state.position), ledger)
        finally:
            letters.close()
        return finish_job(self.target, state, self.checkpoint_file, self.summary, started)

    def _dataset(self, start_after: int) -> Any:
        """read (one task, driver's node, no CPU reserved) -> index (actor pool of N)."""
        import ray.data

        from indexers.ray_stages import BatchIndexer, CatalogDatasource

        context = ray.data.DataContext.get_current()
        saved = context.target_max_block_size
        context.target_max_block_size = 1  # this dataset only: one chunk, one block
        try:
            read = ray.data.read_datasource(
                CatalogDatasource(self.source, start_after, self.chunk_rows),
                num_cpus=0, override_num_blocks=1)
            return read.map_batches(
                BatchIndexer, fn_constructor_args=(self.targets, self.source.base_dir),
                batch_size=1, batch_format="numpy", num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=self.ray.workers))
        finally:
            context.target_max_block_size = saved

    def _consume(self, dataset: Any, ledger: ChunkLedger) -> None:
        """Outcomes as they finish -> ledger -> checkpoint; on a failure, keep the prefix."""
        last_checkpoint = time.monotonic()
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                if not self.summary.startup_seconds:
                    self.summary.startup_seconds = time.perf_counter() - self._started
                for outcome in outcomes(batch):
                    ledger.add(outcome)
                self._count(batch)
                if ledger.advance():
                    self._publish(ledger)
                    if time.monotonic() - last_checkpoint >= self.options.checkpoint_seconds:
                        self._checkpoint(ledger)
                        last_checkpoint = time.monotonic()
        except BaseException:
            self._keep_prefix(ledger)
            raise
        ledger.check_complete()
        self._checkpoint(ledger)

    def _count(self, batch: Mapping[str, np.ndarray]) -> None:
        """Rows and busy seconds per stage (seconds summed over the actors)."""
        rows = int(batch["count"].sum())
        for stage in ("read", "prepare", "write"):
            self.summary.stage_items[stage] += rows
        self.summary.stage_items["encode"] += int(batch["encoded"].sum())
        for stage in ("read", "prepare", "encode", "write"):
            self.summary.stage_seconds[stage] += float(batch[f"{stage}_s"].sum())

    def _publish(self, ledger: ChunkLedger) -> None:
        state = ledger.state
        self.summary.indexed, self.summary.failed = state.indexed, state.failed
        self.summary.reasons = dict(state.reasons)

    def _checkpoint(self, ledger: ChunkLedger) -> None:
        """Flush the target, then record the prefix (never the other way round)."""
        self.target.flush()
        ledger.state.dead_letter_bytes = ledger.letters.sync()
        cp.save(self.checkpoint_file, ledger.state)

    def _keep_prefix(self, ledger: ChunkLedger) -> None:
        """After a failure: checkpoint the prefix reached (every row in it is acknowledged)."""
        try:
            self._checkpoint(ledger)
        except (MmrecError, OSError) as exc:
            log.warning("could not checkpoint after the failure (%s); the last checkpoint "
                        "stays", exc)
