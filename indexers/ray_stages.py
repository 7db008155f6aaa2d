"""What runs on Ray's workers in ``mmrec index --ray``: the catalog read and the indexing actors.

This module imports ray at the top, so only :mod:`indexers.ray_job` imports it, lazily, once
a Ray run starts: the engine's import time does not grow.

- :class:`CatalogDatasource`: one streaming read task on the driver's node (the catalog
  need not exist elsewhere) that reads rows in source order with the ordinary readers
  and cuts them into numbered chunks, one Ray row (and block) per chunk.
- :class:`BatchIndexer`: the callable class ``map_batches`` runs in an actor pool. Each
  actor opens its own target once (for a Qdrant server store: loads the engine's encoders
  once) and prepares, encodes and writes a chunk per call, returning one outcome row per
  chunk: how many rows were stored, and each refused row with its reason.

A failure of the target itself (store down, service unreachable), or of the source as a
whole, is returned as data (``fatal_kind``/``fatal``) rather than raised: Ray wraps
exceptions from user code and drops their cause, and the driver needs the domain error.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from engine.domain import MmrecError
from indexers.catalog import row_to_record
from indexers.sources import CatalogSource, SourceRow
from indexers.targets import Prepared, Target, TargetFactory

PASSED = ("chunk", "end", "count", "last", "read_s")
"""Columns an outcome carries over from the chunk it answers."""


def _fatal_columns(exc: BaseException | None) -> dict[str, str]:
    """The failure columns: the domain error's class name and message, or empty."""
    kind, message = (type(exc).__name__, str(exc)) if exc is not None else ("", "")
    return {"fatal_kind": kind, "fatal": message}


def chunk_row(chunk: int, rows: Sequence[SourceRow], end: int, read_seconds: float, *,
              last: bool = False, fatal: BaseException | None = None) -> pa.Table:
    """One chunk of source rows as a one-row Ray block (rows pickled: field types intact).

    ``end`` is the position the checkpoint moves to once the chunk is done; the ``last``
    chunk is an empty marker, so the driver can tell that no chunk went missing.
    """
    return pa.Table.from_pylist([{
        "chunk": chunk, "rows": pickle.dumps(list(rows)), "end": end, "count": len(rows),
        "last": last, "read_s": read_seconds, **_fatal_columns(fatal)}])


class CatalogDatasource(Datasource):
    """The catalog after ``start_after`` as one streaming read task, in numbered chunks.

    One task keeps positions in source order (the readers stream; most cannot seek);
    reading is cheap beside encoding, and the task streams, so memory stays flat. Each
    chunk is one row of its own block: Ray Data may not split a row, so a chunk is never
    cut across actors (the job also sets a tiny block size, so blocks are not merged).
    """

    def __init__(self, source: CatalogSource, start_after: int, chunk_rows: int) -> None:
        super().__init__()
        self.source = source
        self.start_after = start_after
        self.chunk_rows = chunk_rows

    def estimate_inmemory_data_size(self) -> int | None:
        """Unknown ahead of the read."""
        return None

    @property
    def supports_distributed_reads(self) -> bool:
        """False: read where the command runs, so the catalog need not be on every node."""
        return False

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        """A single task whatever the parallelism asked (see the class docstring)."""
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(self._read, meta)]

    def _read(self) -> Iterator[pa.Table]:
        """Chunks 0, 1, ..., then the empty last one; a source that fails as a whole ends
        with a fatal chunk instead."""
        chunk, end, rows, started = 0, self.start_after, [], time.perf_counter()
        try:
            for row in self.source.rows(self.start_after):
                rows.append(row)
                if len(rows) == self.chunk_rows:
                    end = rows[-1].position
                    yield chunk_row(chunk, rows, end, time.perf_counter() - started)
                    chunk, rows, started = chunk + 1, [], time.perf_counter()
            if rows:
                end = rows[-1].position
                yield chunk_row(chunk, rows, end, time.perf_counter() - started)
                chunk += 1
        except (MmrecError, OSError) as exc:  # the source as a whole: the driver re-raises it
            yield chunk_row(-1, [], end, 0.0, fatal=exc)
            return
        yield chunk_row(chunk, [], end, 0.0, last=True)


@dataclass
class BatchOutcome:
    """What became of each row of a batch: its item id, and "" (stored) or the reason not."""

    ids: list[str]
    reasons: list[str]
    encoded: list[bool]
    """Whether the row reached the encoder (for the stage counts)."""
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("prepare", "encode", "write"), 0.0))
    failure: BaseException | None = None
    """A failure of the target itself: the batch is not stored, the job stops."""


def _row_id(row: SourceRow) -> str:
    return str((row.fields or {}).get("id", ""))


def _reason(text: str) -> str:
    """A refusal's reason, never empty ("" means stored in an outcome)."""
    return text or "refused (no reason given)"


def index_rows(target: Target, rows: Sequence[SourceRow], base_dir: Path) -> BatchOutcome:
    """Validate, prepare, encode and write one batch, as the single-process job does.

    A row the reader, the validation or the target refuses gets its reason; a domain
    error from encode or write is the target's own failure and stops the job.
    """
    out = BatchOutcome([_row_id(r) for r in rows], [""] * len(rows), [False] * len(rows))
    prepared: list[Prepared] = []
    kept: list[int] = []
    started = time.perf_counter()
    for index, row in enumerate(rows):
        if row.fields is None:
            out.reasons[index] = _reason(row.error)
            continue
        try:
            prepared.append(target.prepare(row_to_record(row.fields), base_dir))
            kept.append(index)
            out.ids[index] = prepared[-1].record.id
        except MmrecError as exc:
            out.reasons[index] = _reason(str(exc))
    out.seconds["prepare"] = time.perf_counter() - started
    if not prepared:
        return out
    try:
        started = time.perf_counter()
        encoded, refused = target.encode(prepared)
        out.seconds["encode"] = time.perf_counter() - started
        for index in kept:
            out.encoded[index] = True
        for i, reason in refused:
            out.reasons[kept[i]] = _reason(reason)
        refused_at = {i for i, _ in refused}
        written = [index for i, index in enumerate(kept) if i not in refused_at]
        started = time.perf_counter()
        rejected = target.write(encoded) if encoded else []
        out.seconds["write"] = time.perf_counter() - started
        for i, reason in rejected:
            out.reasons[written[i]] = _reason(reason)
    except MmrecError as exc:
        out.failure = exc
    return out


class BatchIndexer:
    """A Ray actor that indexes chunks with its own target, opened once when it starts."""

    def __init__(self, targets: TargetFactory, base_dir: Path) -> None:
        self._exit = contextlib.ExitStack()
        self.target = self._exit.enter_context(targets())
        self.base_dir = base_dir

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One outcome row per chunk: how many rows were stored and the refused ones."""
        outcomes = [self._chunk(batch, i) for i in range(len(batch["chunk"]))]
        return {name: np.array([o[name] for o in outcomes],
                               dtype=object if name in ("bad", "fatal_kind", "fatal") else None)
                for name in outcomes[0]}

    def _chunk(self, batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        passed = {name: batch[name][i] for name in PASSED}
        if batch["fatal_kind"][i]:  # the source failed: pass the news on
            return {**passed, "stored": 0, "encoded": 0, "bad": pickle.dumps([]),
                    "prepare_s": 0.0, "encode_s": 0.0, "write_s": 0.0,
                    "fatal_kind": batch["fatal_kind"][i], "fatal": batch["fatal"][i]}
        rows: list[SourceRow] = pickle.loads(batch["rows"][i])
        out = index_rows(self.target, rows, self.base_dir)
        bad = [(row.position, item_id, reason, row.raw)
               for row, item_id, reason in zip(rows, out.ids, out.reasons, strict=True)
               if reason]
        return {**passed, "stored": len(rows) - len(bad), "encoded": sum(out.encoded),
                "bad": pickle.dumps(bad),
                **{f"{stage}_s": seconds for stage, seconds in out.seconds.items()},
                **_fatal_columns(out.failure)}

    def __del__(self) -> None:
        """Close the target when Ray lets the actor go (best effort: it may be killed)."""
        with contextlib.suppress(Exception):
            self._exit.close()
