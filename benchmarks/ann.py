"""ANN recall of the embedded store's HNSW against exact search, and its latency/recall curve.

    python -m benchmarks.ann [--size 100000] [--queries 300] [--efs 16,32,64,128,256] [--quick]
    python -m benchmarks.ann --size 1000000     # long: ~45 min on 2 cores

A synthetic catalog (``benchmarks.synthetic_store``, one 512-d vector per item) is built
through ``engine.store.EdgeStore`` with the engine's defaults (Qdrant's HNSW ``m`` 16 and
``ef_construct`` 100, which mmrec does not change) and searched through
``hybrid_search`` at each ``hnsw_ef`` (the engine's default is ``store.hnsw_ef``, 128).
The exact top 10 comes from numpy over the same seeded vectors (mmrec's store API has no
exact mode; qdrant-edge's ``SearchParams(exact=True)`` would give the same answer).
Target: recall@10 >= 0.98 at the defaults; otherwise the smallest ``hnsw_ef`` that reaches
it is named. ``--quick``: 30k items, 100 queries (a couple of minutes on 2 cores).
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

EFS = (16, 32, 64, 128, 256)
TARGET = 0.98


def curve(size: int, queries: int, efs: list[int], work: Path) -> tuple[dict, list[dict]]:
    """Build ``size`` items, search at each ef; (build facts, one row per ef)."""
    data_dir = work / f"ann-{size}"
    built = run_worker("build", {"dir": str(data_dir), "layout": "single", "size": size})
    served = run_worker("serve", {"dir": str(data_dir), "layout": "single", "size": size,
                                  "queries": queries, "hnsw_efs": efs})
    timed = synth.query_vectors(queries + WARMUP_QUERIES)[WARMUP_QUERIES:]  # as the worker's
    exact = synth.exact_top(size, timed)
    rows = [{**synth.provenance("single", size), "size": size, "hnsw_ef": run["hnsw_ef"],
             "recall_at_10": neighbour_recall(run["ids"], exact), "p50_ms": run["p50_ms"],
             "p95_ms": run["p95_ms"], "queries": queries} for run in served["runs"]]
    return built, rows


def verdict(rows: list[dict[str, Any]], default_ef: int) -> dict[str, Any]:
    """Recall at the default ef, whether it meets the target, the smallest ef that does."""
    at_default = next((r for r in rows if r["hnsw_ef"] == default_ef), None)
    reaching = [r["hnsw_ef"] for r in rows if r["recall_at_10"] >= TARGET]
    return {"default_hnsw_ef": default_ef, "target": TARGET,
            "recall_at_default": at_default and at_default["recall_at_10"],
            "meets_target": bool(at_default and at_default["recall_at_10"] >= TARGET),
            "smallest_ef_reaching_target": min(reaching) if reaching else None}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Recall@10 against p50 latency, one point per hnsw_ef."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([r["p50_ms"] for r in rows], [r["recall_at_10"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"ef={r['hnsw_ef']}", (r["p50_ms"], r["recall_at_10"]), fontsize=8,
                    textcoords="offset points", xytext=(4, -10))
    ax.axhline(TARGET, ls=":", color="grey", label=f"target {TARGET}")
    ax.set_xlabel("query p50 (ms)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title(f"EdgeStore HNSW at {rows[0]['size']:,} items (synthetic, 512-d)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict[str, Any]], built: dict[str, Any], found: dict[str, Any]) -> str:
    """The results page."""
    table = markdown_table(["hnsw_ef", "recall@10", "p50 ms", "p95 ms"],
                           [[r["hnsw_ef"], round(r["recall_at_10"], 4), r["p50_ms"],
                             r["p95_ms"]] for r in rows])
    outcome = (f"meets the target {TARGET}" if found["meets_target"] else
               f"misses the target {TARGET}; smallest ef reaching it here: "
               f"{found['smallest_ef_reaching_target'] or 'none of those tried (raise m)'}")
    return "\n".join([
        f"# HNSW recall of the embedded store ({rows[0]['size']:,} synthetic items)", "",
        f"Synthetic Gaussian-mixture unit vectors (512-d, seed {synth.SEED}), "
        f"{rows[0]['queries']} queries, exact top 10 by numpy; HNSW built with the engine's "
        f"defaults (m 16, ef_construct 100) in {built['hnsw_build_s']:.0f} s; "
        f"{built['shard']['indexed_vectors']:,} vectors HNSW-indexed.", "", table, "",
        f"At the default hnsw_ef {found['default_hnsw_ef']}: recall@10 "
        f"{found['recall_at_default']:.4f}, which {outcome}.",
    ])


def run(out_dir: Path = RESULTS, quick: bool = False, *, size: int | None = None,
        queries: int | None = None, efs: list[int] | None = None,
        work_dir: Path | None = None) -> dict[str, Any]:
    """Run the suite; writes ann.{json,md,png} into ``out_dir`` and returns the results."""
    size = size or (30_000 if quick else 100_000)
    queries = queries or (100 if quick else 300)
    default_ef = StoreSettings().hnsw_ef
    efs = sorted(set(efs or EFS) | {default_ef})
    minutes = (size / 10_000 + 1.64e-3 * size + 30 + len(efs) * 5) / 60
    print(f"ann: {size:,} items, {queries} queries, hnsw_ef {efs}; expected ~{minutes:.0f} min "
          "on 2 cores", flush=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="mmrec-ann-") as scratch:
        built, rows = curve(size, queries, efs, Path(scratch))
    found = verdict(rows, default_ef)
    for r in rows:
        print(f"  ef {r['hnsw_ef']}: recall@10 {r['recall_at_10']:.4f}, p50 {r['p50_ms']:.2f} ms")
    data = {"rows": rows, "build": built, "verdict": found}
    synth.save(out_dir, "ann", data, markdown(rows, built, found),
               provenance=synth.store_provenance({"single": [size]}))
    plot(rows, out_dir / "ann.png")
    return data


def main() -> None:
    """Command line: ``python -m benchmarks.ann``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="catalog size (default 100000)")
    parser.add_argument("--queries", type=int, help="timed queries (default 300)")
    parser.add_argument("--efs", type=lambda s: [int(x) for x in s.split(",")],
                        help="hnsw_ef values (default 16,32,64,128,256)")
    parser.add_argument("--quick", action="store_true", help="30k items, 100 queries")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--work-dir", type=Path, help="where the data dir is built (temporary)")
    args = parser.parse_args()
    run(args.out, args.quick, size=args.size, queries=args.queries, efs=args.efs,
        work_dir=args.work_dir)


if __name__ == "__main__":
    main()
