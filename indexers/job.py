"""The indexing job: catalog -> batches -> encoders -> store, with progress and a summary."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from engine.errors import InvalidInput
from engine.pipeline import Engine, ItemInput
from indexers.catalog import BadRow, read_catalog

log = logging.getLogger(__name__)


@dataclass
class IndexSummary:
    """What a job did, for the final report."""

    indexed: int = 0
    failed: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0
    optimize_seconds: float = 0.0
    dead_letter: Path | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def items_per_second(self) -> float:
        """End-to-end indexing rate."""
        return self.indexed / self.seconds if self.seconds else 0.0


def count_lines(path: Path) -> int:
    """Non-blank lines of a file, for the progress bar's total."""
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def batched(rows: Iterable[ItemInput | BadRow], size: int,
            bad: list[BadRow]) -> Iterator[list[ItemInput]]:
    """Group items into batches of ``size``; BadRows are set aside into ``bad`` as they come."""
    batch: list[ItemInput] = []
    for row in rows:
        if isinstance(row, BadRow):
            bad.append(row)
            continue
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def index_catalog(engine: Engine, catalog: Path, *, batch_size: int = 64,
                  dead_letter: Path | None = None, progress: bool = True) -> IndexSummary:
    """Index a JSONL catalog into the engine's store and build its HNSW index.

    Invalid rows are written to ``dead_letter`` (JSONL: line, id, reason, raw)
    and counted; the job goes on. Items are upserted by deterministic id, so a
    re-run replaces rather than duplicates.
    """
    started = time.perf_counter()
    summary = IndexSummary(dead_letter=dead_letter)
    load_images = engine.clip is not None
    if not load_images:
        log.info("CLIP channel off: catalog images are not read; items are indexed by text")
    bad: list[BadRow] = []
    bar = tqdm(total=count_lines(catalog), unit="item", desc="indexing", disable=not progress,
               dynamic_ncols=True)
    letters = dead_letter.open("a", encoding="utf-8") if dead_letter else None
    def drain() -> None:
        """Count and dead-letter the bad rows seen so far."""
        bar.update(len(bad))
        summary.failed += len(bad)
        for row in bad:
            key = row.reason.split(":")[0]
            summary.reasons[key] = summary.reasons.get(key, 0) + 1
            if letters:
                letters.write(json.dumps({"line": row.line, "id": row.id,
                                          "reason": row.reason, "raw": row.raw}) + "\n")
        bad.clear()

    try:
        for batch in batched(read_catalog(catalog, load_images=load_images), batch_size, bad):
            t0 = time.perf_counter()
            done, rejected = _upsert_isolating(engine, batch)
            summary.encode_seconds += time.perf_counter() - t0
            summary.indexed += done
            bar.update(done)
            bad.extend(rejected)
            drain()
        drain()
    finally:
        bar.close()
        if letters:
            letters.close()
    t0 = time.perf_counter()
    engine.store.optimize(wait=True)
    summary.optimize_seconds = time.perf_counter() - t0
    engine.store.flush()
    summary.seconds = time.perf_counter() - started
    return summary


def _upsert_isolating(engine: Engine, batch: list[ItemInput]) -> tuple[int, list[BadRow]]:
    """Upsert a batch; if the engine rejects it, retry one by one so only bad items are lost."""
    try:
        return engine.upsert(batch), []
    except InvalidInput:
        pass
    done, bad = 0, []
    for item in batch:
        try:
            done += engine.upsert([item])
        except InvalidInput as exc:
            bad.append(BadRow(0, item.record.id, str(exc), ""))
    return done, bad
