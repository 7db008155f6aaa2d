"""Search's zero-shot pointwise re-ranker: LlmReranker.score against its raw forward passes.

    python -m benchmarks.rerank_pointwise [--queries 8] [--candidates 20]

For each query, ``--candidates`` distinct catalog texts (MovieLens titles and
Tux Paint captions, none repeated across queries, so the re-ranker's cache of
query-independent "neutral" scores never helps: the cold case) are scored by
``score()``, timed end to end (tokenising, prompt caches, batching, gathering
log-probabilities), and by ``raw_forward_rate()``, which times only the same
forward calls on prepared tensors. Then the same candidates again with the
neutral cache warm (what a repeated catalog sees in service). Target: score at
least 0.8 of the raw rate. Model: the SmolLM2-135M-Instruct GGUF from `make models`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from benchmarks.report import (
    NONE,
    RESULTS,
    Provenance,
    device_name,
    markdown_table,
    real_weights,
    write,
)
from engine.config import EngineConfig
from engine.domain import ModelUnavailable
from engine.encoders import resolve_device
from engine.rerank import LlmReranker, RerankerSpec, default_cache_dir
from engine.rerank.registry import resolve_model
from indexers.datasets import DATASETS, movielens_dir, movielens_items, stamps_dir, tuxpaint_items

BENCH = Path(".mmrec/bench")
QUERIES = ["space adventure", "a cute animal", "romantic comedy", "red vehicle",
           "musical instrument", "scary horror film", "something to eat", "a sunny day",
           "war movie", "winter holiday"]


def texts() -> list[str]:
    """Catalog texts, interleaving films and stamps."""
    films = [f"{r['title']}. {r['text']}" for r in movielens_items(movielens_dir())]
    stamps = [r["title"] for r in tuxpaint_items(stamps_dir() or DATASETS)]
    mixed = [t for pair in zip(films, stamps, strict=False) for t in pair]
    return mixed + films[len(stamps):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    settings = EngineConfig().rerank
    try:  # the configured model: a packaged one's file in the per-user cache (`make models`)
        gguf = resolve_model(settings.model, data_dir=BENCH, models_dir=settings.models_path())
    except ModelUnavailable as error:
        raise SystemExit(str(error)) from error
    device = resolve_device(args.device)
    cache = default_cache_dir(BENCH, gguf)
    spec = RerankerSpec(model=gguf, cache_dir=cache, device=device,
                        batch_size=args.batch_size)
    started = time.perf_counter()
    reranker = LlmReranker.from_spec(spec)
    load_s = time.perf_counter() - started
    pool = texts()
    reranker.score("warm-up", pool[-args.candidates:])
    rows: list[dict[str, Any]] = []
    for i, query in enumerate(QUERIES[: args.queries]):
        candidates = pool[i * args.candidates: (i + 1) * args.candidates]
        t0 = time.perf_counter()
        cold = reranker.score(query, candidates)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        reranker.score(query, candidates)
        warm_s = time.perf_counter() - t0
        raw = reranker.raw_forward_rate(query, candidates)
        rows.append({"query": query, "cold_per_s": cold.scored / cold_s,
                     "warm_per_s": len(candidates) / warm_s, "raw_per_s": raw})
        print(f"{query!r}: score {rows[-1]['cold_per_s']:.1f}/s cold, "
              f"{rows[-1]['warm_per_s']:.1f}/s warm; raw forward {raw:.1f}/s", flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("cold_per_s", "warm_per_s",
                                                               "raw_per_s")}
    table = markdown_table(
        ["model", "device", "batch", "candidates/query", "score cold /s", "score warm /s",
         "raw forward /s", "ratio cold", "ratio warm"],
        [[reranker.name, device, args.batch_size, args.candidates, round(med["cold_per_s"], 1),
          round(med["warm_per_s"], 1), round(med["raw_per_s"], 1),
          round(med["cold_per_s"] / med["raw_per_s"], 3),
          round(med["warm_per_s"] / med["raw_per_s"], 3)]])
    text = (f"# Pointwise zero-shot LLM re-rank throughput (search)\n\nMedians over "
            f"{len(rows)} queries; model load "
            f"{load_s:.1f} s. Target: score >= 0.8 of the raw forward rate.\n\n{table}\n")
    print(text)
    made = Provenance(f"{len(rows)} queries x {args.candidates} distinct candidates from "
                      "MovieLens-100k film texts and Tux Paint stamp captions",
                      {"LLM re-ranker": real_weights(reranker.name) + ", zero-shot pointwise"},
                      NONE, device_name(device))
    write("rerank_pointwise", {"per_query": rows, "medians": med, "load_seconds": load_s}, text,
          provenance=made)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(["raw forward", "score (cold)", "score (warm)"],
           [med["raw_per_s"], med["cold_per_s"], med["warm_per_s"]])
    ax.set_ylabel("candidates / s")
    ax.set_title(f"{reranker.name} on {device}")
    fig.tight_layout()
    fig.savefig(RESULTS / "rerank_pointwise.png", dpi=120)


if __name__ == "__main__":
    main()
