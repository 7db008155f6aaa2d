"""Bulk indexing speed: the whole pipeline against the raw encoders, side by side in one run.

    python -m benchmarks.indexing_throughput [--films N] [--stamps N] [--batch-size 64]

For each catalog it times, alternately and ``--repeats`` times:
- **raw**: the encoders' own batched passes on inputs already in memory
  (text encoder and BM25 on the texts; for image+text also CLIP image and text),
  the same model, batch size and device as the pipeline;
- **pipeline**: ``IndexJob`` from the catalog file on disk into a fresh
  embedded store (read, validate, decode and shrink images in workers, encode,
  fuse, upsert, checkpoint), without and with the final HNSW build.
The ratio pipeline / raw (medians) is the figure of merit; the target is >= 0.9.

Data: MovieLens-100k film titles and genres (text only) and Tux Paint stamps
(PNG + caption), both unpacked by `make data`. Models: the packaged
all-MiniLM-L6-v2, and open_clip ViT-B-32 with random weights for the image
catalog (the forward cost does not depend on the weights; said in the output).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from benchmarks.report import (
    RESULTS,
    Provenance,
    device_name,
    edge_store,
    engine_models,
    markdown_table,
    write,
)
from engine.config import EngineConfig
from engine.encoders.images import load_image
from engine.runtime.engine import Engine
from engine.store import EdgeStore
from indexers.checkpoint import job_files
from indexers.datasets import (
    DATASETS,
    movielens_dir,
    movielens_items,
    stamps_dir,
    tuxpaint_items,
    write_jsonl,
)
from indexers.fetch import FetchOptions
from indexers.pipeline import IndexJob, JobOptions
from indexers.sources import open_source
from indexers.targets import StoreTarget, shrink


def load_catalogs(films: int, stamps: int, folder: Path) -> dict[str, Path]:
    """The two benchmark catalogs as JSONL files in ``folder``."""
    ml, tux = movielens_dir(), stamps_dir()
    if not (ml / "ml-100k.item").is_file() or tux is None:
        raise SystemExit(f"benchmark data missing under {DATASETS}: run `make data` first")
    film_rows = list(movielens_items(ml))[:films]
    stamp_rows = [r for r in tuxpaint_items(tux) if r["image"]][:stamps]
    out = {"text-only (MovieLens films)": folder / "films.jsonl",
           "image+text (Tux Paint stamps)": folder / "stamps.jsonl"}
    write_jsonl(iter(film_rows), out["text-only (MovieLens films)"])
    write_jsonl(iter(stamp_rows), out["image+text (Tux Paint stamps)"])
    return {name: path for name, path in out.items() if path.stat().st_size}


def raw_seconds(engine: Engine, catalog: Path) -> float:
    """Time the encoders alone (text, BM25, CLIP image and text) on in-memory inputs."""
    rows = [row.fields for row in open_source(catalog).rows() if row.fields]
    texts = [". ".join(p for p in (r.get("title", ""), r.get("text", "")) if p) for r in rows]
    images = [shrink(load_image(r["image"]), 512) for r in rows if r.get("image")]
    started = time.perf_counter()
    engine.text.encode_documents(texts)
    if engine.lexical is not None:
        engine.lexical.encode_documents(texts)
    if engine.clip is not None and images:
        engine.clip.encode_images(images)
        engine.clip.encode_texts(texts)
    return time.perf_counter() - started


def pipeline_seconds(engine: Engine, catalog: Path, options: JobOptions, scratch: Path
                     ) -> tuple[float, float, dict[str, float]]:
    """Run the real job into a fresh store; returns (streaming s, with index build s, rates)."""
    scratch.mkdir(parents=True)
    store = EdgeStore(scratch / "store", engine.schema)
    real_store, engine.store = engine.store, store
    try:
        checkpoint, letters = job_files(scratch / "jobs", catalog)
        # The catalogs name the data sets' images, outside their own folder.
        fetch = FetchOptions(allow_outside_paths=True)
        job = IndexJob(open_source(catalog), StoreTarget(engine, fetch),
                       checkpoint_file=checkpoint, dead_letter=letters,
                       options=options)
        summary = job.run()
        assert summary.failed == 0, summary.reasons
    finally:
        engine.store = real_store
        store.close()
    streaming = summary.seconds - summary.finish_seconds
    return streaming, summary.seconds, summary.stage_rates()


def engine_for(clip: bool, batch_size: int, data_dir: Path) -> Engine:
    """The packaged MiniLM, plus ViT-B-32 with random weights when ``clip``."""
    config = EngineConfig.load(
        clip={"enabled": clip, "model": "ViT-B-32", "random_weights": True, "pretrained": None,
              "batch_size": batch_size},
        text_encoder={"batch_size": batch_size}, store={"data_dir": data_dir})
    return Engine.from_config(config, load_reranker=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=1682)
    parser.add_argument("--stamps", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group-batches", type=int, default=JobOptions.group_batches)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    models: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        catalogs = load_catalogs(args.films, args.stamps, Path(tmp))
        for run, (name, catalog) in enumerate(catalogs.items()):
            clip = "image" in name
            engine = engine_for(clip, args.batch_size, Path(tmp) / f"warm{run}")
            items = sum(1 for _ in open_source(catalog).rows())
            # the text-only catalog's engine has CLIP off; the image catalog's says its weights
            models.update({r: m for r, m in engine_models(engine.info()).items() if m != "off"})
            raw_seconds(engine, catalog)  # warm-up: first batches pay one-off costs
            raws, streams, totals, rates = [], [], [], []
            for repeat in range(args.repeats):
                raws.append(raw_seconds(engine, catalog))
                options = JobOptions(batch_size=args.batch_size, progress=False,
                                     group_batches=args.group_batches)
                stream, total, rate = pipeline_seconds(engine, catalog, options,
                                                       Path(tmp) / f"run{run}-{repeat}")
                streams.append(stream)
                totals.append(total)
                rates.append(rate)
                print(f"{name}: raw {items / raws[-1]:.1f}/s, pipeline {items / stream:.1f}/s "
                      f"(with index build {items / total:.1f}/s)", flush=True)
            raw, stream, total = (statistics.median(v) for v in (raws, streams, totals))
            results.append({
                "catalog": name, "items": items, "batch_size": args.batch_size,
                "group_batches": args.group_batches,
                "device": engine.device, "text_model": engine.text.name,
                "clip_model": engine.clip.name if engine.clip else "off",
                "raw_items_per_s": items / raw, "pipeline_items_per_s": items / stream,
                "pipeline_with_build_items_per_s": items / total,
                "ratio": raw / stream, "ratio_with_build": raw / total,
                "stage_items_per_busy_s": rates[len(rates) // 2],
                "repeats": {"raw_s": raws, "pipeline_s": streams, "with_build_s": totals},
            })
            engine.close()
    data = "; ".join(f"{r['catalog']}: {r['items']:,} items" for r in results)
    report(results, Provenance(data, models, edge_store(), device_name(results[0]["device"])))


def report(results: list[dict[str, Any]], provenance: Provenance) -> None:
    """Print the table, save JSON/Markdown and the plot."""
    headers = ["catalog", "items", "models", "raw items/s", "pipeline items/s", "ratio",
               "ratio incl. HNSW build"]
    rows = [[r["catalog"], r["items"], f"{r['text_model']}; CLIP: {r['clip_model']}",
             round(r["raw_items_per_s"], 1), round(r["pipeline_items_per_s"], 1),
             round(r["ratio"], 3), round(r["ratio_with_build"], 3)] for r in results]
    table = markdown_table(headers, rows)
    text = (f"# Indexing throughput: pipeline vs raw encoders\n\n"
            f"Device {results[0]['device']}, batch size {results[0]['batch_size']}, medians of "
            f"{len(results[0]['repeats']['raw_s'])} alternating repeats. Target: ratio >= 0.9.\n\n"
            f"{table}\n")
    print(text)
    write("indexing_throughput", {"results": results}, text, provenance=provenance)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [r["catalog"] for r in results]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [r["raw_items_per_s"] for r in results], 0.4, label="raw")
    ax.bar([x + 0.2 for x in xs], [r["pipeline_items_per_s"] for r in results], 0.4,
           label="pipeline")
    for x, r in zip(xs, results, strict=True):
        ax.text(x + 0.2, r["pipeline_items_per_s"], f"{r['ratio']:.2f}x", ha="center",
                va="bottom")
    ax.set_xticks(list(xs), labels)
    ax.set_yscale("log")
    ax.set_ylabel("items / s")
    ax.set_title("mmrec indexing: pipeline vs raw encoder forward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "indexing_throughput.png", dpi=120)


if __name__ == "__main__":
    main()
