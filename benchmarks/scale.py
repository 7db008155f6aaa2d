"""How the embedded store scales: indexing, HNSW build, query latency, memory and disk per item.

    python -m benchmarks.scale [--sizes 10000,30000,100000] [--queries 300] [--quick]
    python -m benchmarks.scale --sizes 10000,30000,100000,300000,1000000   # long: ~1.5 h

Synthetic catalogs (``benchmarks.synthetic_store``: seeded Gaussian-mixture unit vectors)
through mmrec's own ``engine.store.EdgeStore``. For each size, in fresh processes
(``benchmarks.store_worker``): upsert rate (items/s), the engine's HNSW build
(copy-and-swap, ``optimize(wait=True)``), single-query p50/p95 (top 10, the engine's
default ``hnsw_ef``), RSS growth per item of a process that opens the data dir and
searches it, and disk bytes per item. Two layouts: ``single`` (one 512-d vector) and
``fused`` (mmrec's item as stored with CLIP and text: fused 896 + clip 512 + text 384 +
BM25 sparse + payload; its query is mmrec's hybrid search of fused + text + lexical).
Reported: the exponent of p50 against size (log-log fit, PNG) and p50 growth from the
smallest to the largest size (target <= 3x from 10k to 1M). ``--quick`` (10k and 30k,
100 queries, fused layout at 10k only) takes a couple of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks import synthetic_store as synth
from benchmarks.report import RESULTS, markdown_table
from benchmarks.store_worker import run_worker
from engine.config import StoreSettings

DEFAULT_SIZES = (10_000, 30_000, 100_000)
QUICK_SIZES = (10_000, 30_000)
FUSED_MAX_SIZE = 100_000
"""The fused layout is measured up to this size unless asked (it costs ~3.5x to build)."""


def expected_seconds(sizes: list[int], fused_sizes: list[int]) -> float:
    """A rough run time from measured rates (2 cores: ~10k upserts/s, HNSW ~1.6 ms/item at
    512-d), plus process starts and queries."""
    def one(size: int, factor: float) -> float:
        return size / 10_000 * factor + 1.64e-3 * size * factor + 20
    return sum(one(s, 1.0) for s in sizes) + sum(one(s, 3.5) for s in fused_sizes)


def measure(layout: synth.Layout, size: int, queries: int, work: Path) -> dict[str, Any]:
    """One row: build a data dir of ``size`` items, then serve ``queries`` queries."""
    data_dir = work / f"{layout}-{size}"
    built = run_worker("build", {"dir": str(data_dir), "layout": layout, "size": size})
    ef = StoreSettings().hnsw_ef
    served = run_worker("serve", {"dir": str(data_dir), "layout": layout, "size": size,
                                  "queries": queries, "hnsw_efs": [ef]})
    (run,) = served["runs"]
    return {
        **synth.provenance(layout, size), "layout": layout, "size": size, "hnsw_ef": ef,
        "queries": queries, "items_per_s": built["items_per_s"], "upsert_s": built["upsert_s"],
        "hnsw_build_s": built["hnsw_build_s"], "shard": built["shard"],
        "p50_ms": run["p50_ms"], "p95_ms": run["p95_ms"],
        "rss_growth_bytes": served["rss_growth"],
        "rss_bytes_per_item": served["rss_growth"]["rss"] / size,
        "anon_bytes_per_item": served["rss_growth"]["anon"] / size,
        "disk": built["disk"], "disk_bytes_per_item": built["disk"]["allocated"] / size,
    }


def fit(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Exponent of p50 ~ size^a (least squares on logs) and p50 growth smallest -> largest."""
    if len(rows) < 2:
        return None
    sizes = np.log([r["size"] for r in rows])
    slope, intercept = np.polyfit(sizes, np.log([r["p50_ms"] for r in rows]), 1)
    counts = [r["size"] for r in rows]
    marginal_rss = np.polyfit(counts, [r["rss_growth_bytes"]["rss"] for r in rows], 1)[0]
    marginal_disk = np.polyfit(counts, [r["disk"]["allocated"] for r in rows], 1)[0]
    return {"exponent": float(slope), "intercept": float(intercept),
            "marginal_rss_bytes_per_item": float(marginal_rss),
            "marginal_disk_bytes_per_item": float(marginal_disk),
            "p50_growth": rows[-1]["p50_ms"] / rows[0]["p50_ms"],
            "from_size": rows[0]["size"], "to_size": rows[-1]["size"]}


def plot(by_layout: dict[str, list[dict[str, Any]]], fits: dict[str, Any], path: Path) -> None:
    """Log-log p50 and p95 against size per layout, with the fitted line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for layout, rows in by_layout.items():
        sizes = np.array([r["size"] for r in rows])
        (line,) = ax.loglog(sizes, [r["p50_ms"] for r in rows], "o-", label=f"{layout} p50")
        ax.loglog(sizes, [r["p95_ms"] for r in rows], "x--", color=line.get_color(),
                  label=f"{layout} p95")
        if (f := fits.get(layout)) is not None:
            ax.loglog(sizes, np.exp(f["intercept"]) * sizes ** f["exponent"], ":",
                      color=line.get_color(), label=f"{layout} fit: size^{f['exponent']:.2f}")
    ax.set_xlabel("items")
    ax.set_ylabel("query latency (ms)")
    ax.set_title("EdgeStore query latency against catalog size (top 10)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict[str, Any]], fits: dict[str, Any]) -> str:
    """The results page."""
    table = markdown_table(
        ["layout", "items", "HNSW-indexed", "upsert items/s", "HNSW build s", "p50 ms", "p95 ms",
         "RSS B/item", "anon B/item", "disk B/item"],
        [[r["layout"], f"{r['size']:,}", f"{r['shard']['indexed_vectors']:,}",
          round(r["items_per_s"]), round(r["hnsw_build_s"], 1),
          r["p50_ms"], r["p95_ms"], round(r["rss_bytes_per_item"]),
          round(r["anon_bytes_per_item"]), round(r["disk_bytes_per_item"])] for r in rows])
    lines = ["# EdgeStore at scale (synthetic items)", "",
             f"Synthetic Gaussian-mixture unit vectors (seed {synth.SEED}, {synth.CLUSTERS} "
             f"clusters), top {synth.TOP_K}, hnsw_ef {rows[0]['hnsw_ef']}, "
             f"{rows[0]['queries']} queries per size; each size built and served in fresh "
             "processes. RSS: growth of a process that opened the data dir and searched it "
             "(anon: heap; the rest is memory-mapped segment files). Disk: allocated blocks.",
             "", table, ""]
    for layout, f in fits.items():
        if f is not None:
            lines.append(f"- `{layout}`: p50 ~ size^{f['exponent']:.3f}; p50 grew "
                         f"{f['p50_growth']:.2f}x from {f['from_size']:,} to {f['to_size']:,} "
                         "(target <= 3x from 10k to 1M); marginal cost (slope over sizes, "
                         f"without the fixed overhead): {f['marginal_rss_bytes_per_item']:.0f} "
                         f"B RSS and {f['marginal_disk_bytes_per_item']:.0f} B disk per item.")
    return "\n".join(lines)


def run(out_dir: Path = RESULTS, quick: bool = False, *, sizes: list[int] | None = None,
        queries: int | None = None, fused_sizes: list[int] | None = None,
        work_dir: Path | None = None) -> dict[str, Any]:
    """Run the suite; writes scale.{json,md,png} into ``out_dir`` and returns the results."""
    sizes = sorted(sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))
    if fused_sizes is None:
        limit = 10_000 if quick else FUSED_MAX_SIZE
        fused_sizes = [size for size in sizes if size <= limit]
    queries = queries or (100 if quick else 300)
    print(f"scale: sizes {sizes}, fused layout at {fused_sizes}, {queries} queries; "
          f"expected ~{expected_seconds(sizes, fused_sizes) / 60:.0f} min on 2 cores", flush=True)
    by_layout: dict[str, list[dict[str, Any]]] = {"single": [], "fused": []}
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="mmrec-scale-") as scratch:
        for layout, wanted in (("single", sizes), ("fused", fused_sizes)):
            for size in wanted:
                row = measure(layout, size, queries, Path(scratch))  # type: ignore[arg-type]  # why: the loop's layouts are Layout literals
                by_layout[layout].append(row)
                print(f"  {layout} {size:,}: p50 {row['p50_ms']:.2f} ms, "
                      f"{row['rss_bytes_per_item']:.0f} B RSS/item", flush=True)
    by_layout = {k: v for k, v in by_layout.items() if v}
    fits = {layout: fit(rows) for layout, rows in by_layout.items()}
    rows = [r for rs in by_layout.values() for r in rs]
    data = {"rows": rows, "fits": fits}
    measured = {layout: [r["size"] for r in rs] for layout, rs in by_layout.items()}
    synth.save(out_dir, "scale", data, markdown(rows, fits),
               provenance=synth.store_provenance(measured))
    plot(by_layout, fits, out_dir / "scale.png")
    return data


def main() -> None:
    """Command line: ``python -m benchmarks.scale``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        help="comma-separated catalog sizes (default 10000,30000,100000)")
    parser.add_argument("--fused-sizes", type=lambda s: [int(x) for x in s.split(",") if x],
                        help="sizes for the fused layout (default: sizes up to 100k)")
    parser.add_argument("--queries", type=int, help="timed queries per size (default 300)")
    parser.add_argument("--quick", action="store_true", help="10k and 30k, 100 queries")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--work-dir", type=Path, help="where data dirs are built (temporary)")
    args = parser.parse_args()
    run(args.out, args.quick, sizes=args.sizes, queries=args.queries,
        fused_sizes=args.fused_sizes, work_dir=args.work_dir)


if __name__ == "__main__":
    main()
