"""Retrieval quality: lexical, dense, hybrid and hybrid + LLM re-rank on one labelled task.

    python -m benchmarks.retrieval_quality

Task (honest, built from shipped data): the Tux Paint stamps are filed in
category folders (animals/birds, food/fruit, vehicles/emergency, ...). Every
folder name with at least 3 stamps under it becomes a query ("birds",
"natural forces"); the stamps under it are its relevant items. Items are
indexed by their English caption only ("A robin", "A fire truck"), so a query
word rarely appears in a relevant caption: the task rewards meaning over
spelling, and folder names never leak into the indexed text.

Rows (one run, the same index): lexical only (BM25), dense only (fused + text
channels), each dense channel alone (text; fused, which without CLIP is the text vector
again and is folded into it, so that row says what "fused" adds), hybrid fused by DBSF and
by RRF (all channels), hybrid + LLM re-rank of the top 20 (``--no-llm`` leaves it out).
Metrics: Recall@10, nDCG@10 (ir-measures), and Recall@20 (the pool the
re-ranker sees). Caption-to-image retrieval needs CLIP weights; without them
that part is skipped and the output says so.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from benchmarks.report import RESULTS, markdown_table, write
from engine.config import EngineConfig
from engine.domain import SearchRequest
from engine.evaluation import evaluate_qrels, evaluate_qrels_per_query, ranking_to_run
from engine.runtime.engine import Engine
from indexers.datasets import stamps_dir, tuxpaint_items, write_jsonl
from indexers.fetch import FetchOptions
from indexers.job import run_index_job
from indexers.pipeline import JobOptions

WORK = Path(".mmrec/bench/retrieval")
SKIP_FOLDERS = {"cartoon", "iso", "realistic", "us", "coins"}
NAMES = {"naturalforces": "natural forces", "newyears": "new years"}

ROWS: dict[str, dict[str, Any]] = {
    "lexical only (BM25)": {"weights": {"fused": 0, "text": 0, "clip": 0, "lexical": 1},
                            "rerank": False},
    "dense only (fused + text)": {"weights": {"lexical": 0}, "rerank": False},
    "text only (MiniLM)": {"weights": {"fused": 0, "clip": 0, "lexical": 0}, "rerank": False},
    "fused only": {"weights": {"text": 0, "clip": 0, "lexical": 0}, "rerank": False},
    "hybrid, DBSF (all channels)": {"weights": {}, "rerank": False, "fusion": "dbsf"},
    "hybrid (RRF of all channels)": {"weights": {}, "rerank": False},
    "hybrid + LLM re-rank (top 20)": {"weights": {}, "rerank": True},
}


def build_task(stamps: Path) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, dict]]:
    """Catalog rows, queries (id -> text) and qrels (query id -> {item id: 1})."""
    rows = list(tuxpaint_items(stamps))
    members: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        folders = row["id"].removeprefix("tux-").split("/")[:-1]
        for folder in folders:
            if folder not in SKIP_FOLDERS and len(folder) > 2:
                members[folder].add(row["id"])
    queries = {f: NAMES.get(f, f.replace("_", " ")) for f, m in members.items() if len(m) >= 3}
    qrels = {f: dict.fromkeys(members[f], 1) for f in queries}
    return rows, queries, qrels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-ms", type=int, default=20_000,
                        help="Re-rank budget per query (large: measure quality, not speed).")
    parser.add_argument("--no-llm", action="store_true", help="Leave out the LLM re-rank row.")
    args = parser.parse_args()
    stamps = stamps_dir()
    if stamps is None:
        raise SystemExit("the Tux Paint stamps are missing: run `make data` first")
    rows, queries, qrels = build_task(stamps)
    catalog = WORK / "stamps.jsonl"
    write_jsonl(iter(rows), catalog)
    config = EngineConfig.load(clip={"enabled": True}, store={"data_dir": WORK / "store"})
    engine = Engine.from_config(config)
    try:
        # The catalog names the stamps' images in the data sets folder, outside its own.
        run_index_job(config, catalog, engine=engine, options=JobOptions(progress=False),
                      fetch=FetchOptions(allow_outside_paths=True))
        llm = engine.models.reranker_status
        clip = engine.clip.name if engine.clip else "off (no weights on this machine)"
        print(f"task: {len(queries)} folder-name queries over {len(rows)} Tux Paint stamp "
              f"captions; text model {engine.text.name}; CLIP: {clip}; "
              f"LLM: {llm.name if llm and llm.loaded else 'off'}")
        runs, seconds, reranked = {}, {}, {}
        for label, row in ROWS.items():
            if row["rerank"] and (args.no_llm or engine.pipeline.rerank.reranker is None):
                print(f"{label}: skipped, " + ("--no-llm" if args.no_llm else
                                                 "the LLM is not loaded"))
                continue
            started = time.perf_counter()
            results = {qid: engine.search(SearchRequest(
                text=text, image=None, top_k=20, tenant="default", weights=row["weights"],
                rerank=row["rerank"], budget_ms=args.budget_ms, fusion=row.get("fusion")))
                for qid, text in queries.items()}
            seconds[label] = (time.perf_counter() - started) / len(queries)
            runs[label] = {qid: ranking_to_run([h.record.id for h in result.hits])
                           for qid, result in results.items()}
            if row["rerank"]:  # the pace estimate may stop the LLM short of the budget
                reranked[label] = sum(r.reranked for r in results.values()) / len(results)
        if engine.clip is None:
            print("caption-to-image retrieval skipped: CLIP weights are not on this machine")
    finally:
        engine.close()
    report(queries, qrels, runs, seconds, reranked)


def per_query_ndcg(qrels: dict, run: dict) -> dict[str, float]:
    """nDCG@10 of each query."""
    return {q: m["nDCG@10"] for q, m in evaluate_qrels_per_query(qrels, run, (10,)).items()}


def report(queries: dict[str, str], qrels: dict, runs: dict, seconds: dict,
           reranked: dict[str, float]) -> None:
    """Table, helped/hurt analysis of the re-ranker, JSON/Markdown/PNG."""
    scores = {label: evaluate_qrels(qrels, run, (10, 20)) for label, run in runs.items()}
    table = markdown_table(
        ["retrieval", "Recall@10", "nDCG@10", "Recall@20", "ms/query"],
        [[label, round(s["R@10"], 3), round(s["nDCG@10"], 3), round(s["R@20"], 3),
          round(seconds[label] * 1000)] for label, s in scores.items()])
    text = f"# Retrieval quality: Tux Paint folder names -> stamp captions\n\n{table}\n"
    text += "".join(f"\n{label}: the LLM re-scored {n:.1f} of 20 candidates per query on "
                    "average.\n" for label, n in reranked.items())
    data: dict[str, Any] = {"queries": len(queries), "scores": scores,
                            "ms_per_query": {k: v * 1000 for k, v in seconds.items()},
                            "reranked_per_query": reranked}
    base, top = "hybrid (RRF of all channels)", "hybrid + LLM re-rank (top 20)"
    if top in runs:
        before, after = per_query_ndcg(qrels, runs[base]), per_query_ndcg(qrels, runs[top])
        delta = {q: after.get(q, 0.0) - before.get(q, 0.0) for q in qrels}
        helped = sorted((q for q in delta if delta[q] > 1e-9), key=lambda q: -delta[q])
        hurt = sorted((q for q in delta if delta[q] < -1e-9), key=lambda q: delta[q])
        text += (f"\nLLM re-rank vs hybrid, per query nDCG@10: helped {len(helped)}, hurt "
                 f"{len(hurt)}, unchanged {len(delta) - len(helped) - len(hurt)}.\n"
                 "Helped most: "
                 f"{', '.join(f'{queries[q]} (+{delta[q]:.2f})' for q in helped[:6])}"
                 ".\nHurt most: "
                 f"{', '.join(f'{queries[q]} ({delta[q]:.2f})' for q in hurt[:6])}.\n")
        data["rerank_delta_ndcg10"] = delta
    print(text)
    write("retrieval_quality", data, text)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = list(scores)
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [scores[k]["R@10"] for k in labels], 0.4, label="Recall@10")
    ax.bar([x + 0.2 for x in xs], [scores[k]["nDCG@10"] for k in labels], 0.4, label="nDCG@10")
    ax.set_xticks(list(xs), [k.split(" (")[0] for k in labels], fontsize=8)
    ax.set_title(f"Tux Paint folder-name queries ({len(queries)}) over stamp captions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "retrieval_quality.png", dpi=120)


if __name__ == "__main__":
    main()
