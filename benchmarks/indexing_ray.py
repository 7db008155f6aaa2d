"""Indexing on Ray Data: the speed-up from 1 to 2 workers, beside the single-process job.

    python -m benchmarks.indexing_ray [--rows N] [--quick] [--service HOST:PORT] [--out DIR]

The same catalog (MovieLens-100k film titles and genres from `make data`, else synthetic
text rows) is indexed three ways on one local Ray session (``num_cpus`` = 2):

- **single**: ``IndexJob``, the single-process job (torch's own threads, 2 on 2 cores);
- **ray-1** / **ray-2**: ``RayIndexJob`` with 1 and 2 actors (Ray gives each actor one CPU,
  so one torch thread).

The target is **encode-only**: the driver (single) or each actor (ray-N) encodes with the
engine's own encoders (the packaged all-MiniLM-L6-v2, CLIP off, BM25 on) exactly as the
Qdrant-server target does, and the write is dropped, since no Qdrant server is installable
here. With ``--service`` the three are also run through a running service's UpsertItems
(there the service encodes; the workers only stream).

Reported per run: wall seconds, start-up seconds (Ray actors loading the encoders, to the
first batch back), and items/s after start-up, which is the figure the speed-up is taken
on (start-up is a fixed cost per job). The full run indexes 10,000 rows (the films
repeated with new ids; several minutes on 2 cores); ``--quick`` 1,000 (a couple).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from benchmarks import report
from benchmarks import synthetic_store as synth
from benchmarks.report import RESULTS, markdown_table
from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.runtime.engine import Engine
from indexers.checkpoint import job_files
from indexers.datasets import movielens_dir, movielens_items, write_jsonl
from indexers.fetch import FetchOptions
from indexers.pipeline import IndexJob, JobOptions, JobSummary
from indexers.ray_job import RayIndexJob, RayOptions
from indexers.sources import open_source
from indexers.targets import Rejection, ServiceTarget, StoreTarget, Target

FULL_ROWS = 10_000
QUICK_ROWS = 1_000
BATCH_SIZE = 32
GROUP_BATCHES = 2
"""Chunks of 64 rows: enough of them for two actors even in a quick run."""


class EncodeOnlyTarget(StoreTarget):
    """Encodes like the store target and drops the write (no Qdrant server here)."""

    def write(self, encoded: list[Any]) -> list[Rejection]:
        """Nothing is stored."""
        return []

    def flush(self) -> None:
        """Nothing to flush."""

    def finish(self) -> None:
        """No index to build."""

    def count(self) -> int | None:
        """Nothing is held."""
        return None


@dataclass(frozen=True)
class EncodeOnlyTargets:
    """Opens an actor's EncodeOnlyTarget: an engine of its own over a scratch data dir."""

    config: EngineConfig

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Target]:
        scratch = Path(tempfile.mkdtemp(prefix="mmrec-bench-actor-"))
        engine = Engine.from_config(_with_data_dir(self.config, scratch), load_reranker=False)
        try:
            yield EncodeOnlyTarget(engine, FetchOptions())
        finally:
            engine.close()
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True)
class ServiceTargets:
    """Opens an actor's ServiceTarget on a running service."""

    address: str

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Target]:
        with MmrecClient(self.address, timeout=600) as client:
            yield ServiceTarget(client, FetchOptions())


def _with_data_dir(config: EngineConfig, data_dir: Path) -> EngineConfig:
    return config.model_copy(update={"store": config.store.model_copy(
        update={"data_dir": data_dir})})


def catalog(rows: int, folder: Path) -> tuple[Path, str]:
    """The catalog as JSONL: MovieLens films when unpacked (repeated past 1,682 with new
    ids), else synthetic rows; returns its path and what it is."""
    ml = movielens_dir()
    if (ml / "ml-100k.item").is_file():
        films = list(movielens_items(ml))
        items = [{**films[n % len(films)], "id": f"ml-{n}"} for n in range(rows)]
        what = f"MovieLens-100k film titles and genres ({len(films):,} films"
        what += ", repeated)" if rows > len(films) else ")"
    else:
        rng = random.Random(0)
        words = ["red", "blue", "lamp", "desk", "chair", "film", "story", "night", "river",
                 "garden", "light", "stone"]
        items = [{"id": f"s-{n}", "title": " ".join(rng.choices(words, k=3)),
                  "text": " ".join(rng.choices(words, k=12))} for n in range(rows)]
        what = "synthetic text rows (MovieLens not unpacked: `make data`)"
    path = folder / "catalog.jsonl"
    write_jsonl(iter(items), path)
    return path, what


def measure(name: str, job: IndexJob | RayIndexJob, rows: int) -> dict[str, Any]:
    """Run one job; its wall time, start-up and rate after start-up."""
    summary: JobSummary = job.run()
    assert summary.failed == 0 and summary.indexed == rows, summary.reasons
    streaming = summary.seconds - summary.startup_seconds - summary.finish_seconds
    after_start = rows - (job.options.batch_size * job.options.group_batches
                          if summary.startup_seconds else 0)
    row = {"run": name, "items": rows, "seconds": summary.seconds,
           "startup_seconds": summary.startup_seconds,
           "items_per_s": rows / summary.seconds,
           "items_per_s_after_start": after_start / streaming if streaming > 0 else 0.0}
    print(f"  {name}: {summary.seconds:.1f} s (start-up {summary.startup_seconds:.1f} s), "
          f"{row['items_per_s_after_start']:.1f} items/s after start-up", flush=True)
    return row


def run_target(kind: str, config: EngineConfig, source: Path, rows: int, work: Path,
               engine: Engine, service: str | None) -> list[dict[str, Any]]:
    """single, ray-1 and ray-2 into one target kind."""
    options = JobOptions(batch_size=BATCH_SIZE, group_batches=GROUP_BATCHES, progress=False,
                         checkpoint_seconds=60, restart=True)
    results = []
    for name, workers in (("single", 0), ("ray-1", 1), ("ray-2", 2)):
        checkpoint, letters = job_files(work / f"{kind}-{name}", source)
        with contextlib.ExitStack() as stack:
            if service:
                client = stack.enter_context(MmrecClient(service, timeout=600))
                driver: Target = ServiceTarget(client, FetchOptions())
                factory: Any = ServiceTargets(service)
            else:
                driver, factory = EncodeOnlyTarget(engine, FetchOptions()), EncodeOnlyTargets(
                    config)
            job: IndexJob | RayIndexJob = (
                IndexJob(open_source(source), driver, checkpoint_file=checkpoint,
                         dead_letter=letters, options=options) if not workers else
                RayIndexJob(open_source(source), driver, factory, checkpoint_file=checkpoint,
                            dead_letter=letters, options=options,
                            ray=RayOptions(workers=workers)))
            results.append({"target": kind, "workers": workers,
                            **measure(name, job, rows)})
    return results


def provenance(engine: Engine, what: str, rows: int, service: str | None) -> report.Provenance:
    """The catalog, the driver's models (every actor loads the same config), the store (none
    for encode-only; the service's own with ``--service``) and the device."""
    store = "none (encode-only: the write is dropped)"
    if service:
        with MmrecClient(service, timeout=60) as client:
            store += f"; with --service, the service's {report.store_name(client.info().store)}"
    return report.Provenance(f"{what}: {rows:,} rows", report.engine_models(engine.info()),
                             store, report.device_name(engine.device))


def markdown(rows: list[dict[str, Any]], what: str, speedups: dict[str, float]) -> str:
    """The results page."""
    table = markdown_table(
        ["target", "run", "items", "wall s", "start-up s", "items/s (wall)",
         "items/s after start-up"],
        [[r["target"], r["run"], r["items"], round(r["seconds"], 1),
          round(r["startup_seconds"], 1), round(r["items_per_s"], 1),
          round(r["items_per_s_after_start"], 1)] for r in rows])
    lines = ["# Indexing on Ray Data: 1 and 2 workers against the single-process job", "",
             f"Catalog: {what}. Text model all-MiniLM-L6-v2 (packaged), CLIP off, BM25 on; "
             f"batch {BATCH_SIZE}, chunks of {BATCH_SIZE * GROUP_BATCHES} rows. One local Ray "
             "session with 2 CPUs; each actor has one CPU (one torch thread), the single "
             "job uses torch's default threads. encode-only: the workers encode as for a "
             "Qdrant-server target and the write is dropped (no server here).", "", table, ""]
    for target, speedup in speedups.items():
        lines.append(f"- `{target}`: ray-2 / ray-1 after start-up = {speedup:.2f}x.")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Items/s after start-up per run, grouped by target."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    targets = sorted({r["target"] for r in rows})
    runs = ["single", "ray-1", "ray-2"]
    for i, run in enumerate(runs):
        values = [next((r["items_per_s_after_start"] for r in rows
                        if r["target"] == t and r["run"] == run), 0.0) for t in targets]
        ax.bar([x + (i - 1) * 0.27 for x in range(len(targets))], values, 0.27, label=run)
    ax.set_xticks(range(len(targets)), targets)
    ax.set_ylabel("items / s after start-up")
    ax.set_title("mmrec indexing: single process vs Ray Data workers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(out_dir: Path = RESULTS, quick: bool = False, *, rows: int | None = None,
        service: str | None = None) -> dict[str, Any]:
    """Run the benchmark; writes indexing_ray.{json,md,png} into ``out_dir``."""
    import ray

    rows = rows or (QUICK_ROWS if quick else FULL_ROWS)
    config = EngineConfig.load(clip={"enabled": False},
                               text_encoder={"batch_size": BATCH_SIZE})
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mmrec-bench-ray-") as tmp:
        work = Path(tmp)
        source, what = catalog(rows, work)
        print(f"indexing_ray: {rows:,} rows of {what}", flush=True)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        engine = Engine.from_config(_with_data_dir(config, work / "driver"),
                                    load_reranker=False)
        try:
            made = provenance(engine, what, rows, service)
            engine.text.encode_documents(["warm-up"] * BATCH_SIZE)
            targets = [("encode-only", None)] + ([("service", service)] if service else [])
            for kind, address in targets:
                results += run_target(kind, config, source, rows, work, engine, address)
        finally:
            engine.close()
            ray.shutdown()
    speedups = {}
    for kind in sorted({r["target"] for r in results}):
        by_run = {r["run"]: r["items_per_s_after_start"] for r in results if r["target"] == kind}
        speedups[kind] = by_run["ray-2"] / by_run["ray-1"] if by_run["ray-1"] else 0.0
    data = {"rows": results, "catalog": what, "speedup_2_over_1": speedups, "quick": quick}
    synth.save(out_dir, "indexing_ray", data, markdown(results, what, speedups),
               provenance=made)
    plot(results, out_dir / "indexing_ray.png")
    print(markdown(results, what, speedups))
    return data


def main() -> None:
    """Command line: ``python -m benchmarks.indexing_ray``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int,
                        help=f"catalog rows (default {FULL_ROWS:,}; quick {QUICK_ROWS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS} rows")
    parser.add_argument("--service", help="also index through this running service")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    run(args.out, args.quick, rows=args.rows, service=args.service)


if __name__ == "__main__":
    main()
