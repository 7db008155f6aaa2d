"""Quantized vectors in the embedded store: recall@10, latency and memory per item vs float32.

    python -m benchmarks.quantisation [--size 100000] [--queries 300] [--kinds none,int8,binary]
    python -m benchmarks.quantisation --size 1000000   # long: ~2 h on 2 cores

One synthetic catalog (``benchmarks.synthetic_store``, one 512-d vector per item) per
``store.quantization`` kind, built through ``engine.store.EdgeStore`` exactly as the
setting makes it (quantized vectors in RAM, float32 originals memory-mapped from disk) and
searched at the engine's defaults (``hnsw_ef`` 128, oversampling 2, rescoring on).
Recall@10 is against the exact top 10 (numpy over the same vectors). Memory per item is
the RSS growth of a fresh process that opened the data dir and ran the queries
(total, and anonymous: heap, not file pages the kernel may drop), and the quantized
vectors' own size. Target: memory per item <= 0.35x float32 at recall@10 >= 0.97.
``--quick``: 20k items, 100 queries (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from benchmarks import synthetic_store as synth
from benchmarks.report import RESULTS, markdown_table
from benchmarks.store_worker import WARMUP_QUERIES, run_worker
from engine.config import StoreSettings
from engine.evaluation import neighbour_recall

KINDS = ("none", "int8", "binary")
MEMORY_TARGET, RECALL_TARGET = 0.35, 0.97


def measure(kind: str, size: int, queries: int, work: Path, exact: Any) -> dict[str, Any]:
    """One row: build and serve ``size`` items with quantization ``kind``."""
    settings = StoreSettings(quantization=kind)  # type: ignore[arg-type]  # why: kind comes from the CLI, pydantic checks it
    quantization = {"kind": kind, "oversampling": settings.quantization_oversampling,
                    "rescore": settings.quantization_rescore}
    spec = {"dir": str(work / f"q-{kind}-{size}"), "layout": "single", "size": size,
            "quantization": quantization}
    built = run_worker("build", spec)
    served = run_worker("serve", {**spec, "queries": queries, "hnsw_efs": [settings.hnsw_ef]})
    (run,) = served["runs"]
    return {**synth.provenance("single", size), "quantization": quantization, "size": size,
            "hnsw_ef": settings.hnsw_ef, "queries": queries,
            "recall_at_10": neighbour_recall(run["ids"], exact), "p50_ms": run["p50_ms"],
            "p95_ms": run["p95_ms"], "hnsw_build_s": built["hnsw_build_s"],
            "rss_bytes_per_item": served["rss_growth"]["rss"] / size,
            "anon_bytes_per_item": served["rss_growth"]["anon"] / size,
            "quantized_bytes_per_item": built["disk"]["quantized"] / size,
            "disk_bytes_per_item": built["disk"]["allocated"] / size}


def compare(rows: list[dict[str, Any]]) -> None:
    """Add each row's memory ratios to float32 and whether it meets the target."""
    base = next((r for r in rows if r["quantization"]["kind"] == "none"), None)
    for r in rows:
        if base is None:
            continue
        r["rss_ratio"] = r["rss_bytes_per_item"] / base["rss_bytes_per_item"]
        r["anon_ratio"] = r["anon_bytes_per_item"] / max(base["anon_bytes_per_item"], 1.0)
        r["meets_target"] = (r["quantization"]["kind"] != "none"
                             and r["rss_ratio"] <= MEMORY_TARGET
                             and r["recall_at_10"] >= RECALL_TARGET)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Recall@10 against RSS per item, one point per kind."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        ax.scatter(r["rss_bytes_per_item"], r["recall_at_10"], s=50)
        ax.annotate(f"{r['quantization']['kind']} ({r['p50_ms']:.2f} ms)",
                    (r["rss_bytes_per_item"], r["recall_at_10"]), fontsize=8,
                    textcoords="offset points", xytext=(5, 5))
    ax.axhline(RECALL_TARGET, ls=":", color="grey", label=f"recall target {RECALL_TARGET}")
    ax.set_xlabel("RSS growth per item (bytes)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title(f"Quantization at {rows[0]['size']:,} items (synthetic, 512-d)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results page."""
    table = markdown_table(
        ["quantization", "recall@10", "p50 ms", "p95 ms", "RSS B/item", "x float32",
         "anon B/item", "quantized B/item", "disk B/item", "target met"],
        [[r["quantization"]["kind"], round(r["recall_at_10"], 4), r["p50_ms"], r["p95_ms"],
          round(r["rss_bytes_per_item"]), r.get("rss_ratio", "-"),
          round(r["anon_bytes_per_item"]), round(r["quantized_bytes_per_item"]),
          round(r["disk_bytes_per_item"]), r.get("meets_target", "-")] for r in rows])
    first = rows[0]
    return "\n".join([
        f"# Quantization in the embedded store ({first['size']:,} synthetic items)", "",
        f"Synthetic Gaussian-mixture unit vectors (512-d, seed {synth.SEED}), "
        f"{first['queries']} queries, hnsw_ef {first['hnsw_ef']}, oversampling "
        f"{first['quantization']['oversampling']}, rescoring "
        f"{first['quantization']['rescore']}; recall against the exact top 10 by numpy. "
        "Quantized kinds keep the float32 originals memory-mapped (rescoring reads them). "
        "RSS: growth of a fresh process that opened the data dir and ran the queries.",
        "", table, "",
        f"Target: RSS per item <= {MEMORY_TARGET}x float32 at recall@10 >= {RECALL_TARGET}.",
    ])


def run(out_dir: Path = RESULTS, quick: bool = False, *, size: int | None = None,
        queries: int | None = None, kinds: list[str] | None = None,
        work_dir: Path | None = None) -> dict[str, Any]:
    """Run the suite; writes quantisation.{json,md,png} into ``out_dir``; returns results."""
    size = size or (20_000 if quick else 100_000)
    queries = queries or (100 if quick else 300)
    kinds = list(kinds or KINDS)
    minutes = len(kinds) * (size / 10_000 + 1.64e-3 * size + 30) / 60
    print(f"quantisation: {size:,} items, kinds {kinds}, {queries} queries; expected "
          f"~{minutes:.0f} min on 2 cores", flush=True)
    exact = synth.exact_top(size, synth.query_vectors(queries + WARMUP_QUERIES)[WARMUP_QUERIES:])
    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="mmrec-quant-") as scratch:
        for kind in kinds:
            rows.append(measure(kind, size, queries, Path(scratch), exact))
            print(f"  {kind}: recall@10 {rows[-1]['recall_at_10']:.4f}, p50 "
                  f"{rows[-1]['p50_ms']:.2f} ms, {rows[-1]['rss_bytes_per_item']:.0f} B "
                  "RSS/item", flush=True)
    compare(rows)
    data = {"rows": rows, "targets": {"memory_ratio": MEMORY_TARGET, "recall": RECALL_TARGET}}
    synth.save(out_dir, "quantisation", data, markdown(rows),
               provenance=synth.store_provenance({"single": [size]}))
    plot(rows, out_dir / "quantisation.png")
    return data


def main() -> None:
    """Command line: ``python -m benchmarks.quantisation``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="catalog size (default 100000)")
    parser.add_argument("--queries", type=int, help="timed queries (default 300)")
    parser.add_argument("--kinds", type=lambda s: s.split(","), help="default none,int8,binary")
    parser.add_argument("--quick", action="store_true", help="20k items, 100 queries")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--work-dir", type=Path, help="where data dirs are built (temporary)")
    args = parser.parse_args()
    run(args.out, args.quick, size=args.size, queries=args.queries, kinds=args.kinds,
        work_dir=args.work_dir)


if __name__ == "__main__":
    main()
