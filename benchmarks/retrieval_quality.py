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

The LLM row is the LLM's order alone (blend weight 1). The served blend weight
``rerank.search_blend_weight`` is chosen here, on a validation half of the queries
(a fixed hash of the query id), by the rule trained re-rankers follow: the grid's
best weight only when its per-query gain over the hybrid is above two standard
errors, else 0. The other half is the test half the chosen weight is reported on.
Metrics: Recall@10, nDCG@10 (ir-measures), and Recall@20 (the pool the
re-ranker sees). Caption-to-image retrieval needs CLIP weights; without them
that part is skipped and the output says so.
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.report import RESULTS, Provenance, from_engine, markdown_table, write
from engine.config import EngineConfig
from engine.domain import SearchRequest
from engine.evaluation import evaluate_qrels, evaluate_qrels_per_query, ranking_to_run
from engine.rerank.stage import Blend, merge_order
from engine.rerank.training import BLEND_GRID, clear_gain
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
BASE, LLM_ROW = "hybrid (RRF of all channels)", "hybrid + LLM re-rank (top 20)"
HEAD = 20
"""Candidates the LLM re-scores (the stage's default ``rerank.top_k``)."""


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
                        help="Re-rank budget per query (large: measure quality, not speed; "
                        "the LLM must score all 20 candidates for the blend to be chosen).")
    parser.add_argument("--no-llm", action="store_true", help="Leave out the LLM re-rank row.")
    args = parser.parse_args()
    stamps = stamps_dir()
    if stamps is None:
        raise SystemExit("the Tux Paint stamps are missing: run `make data` first")
    rows, queries, qrels = build_task(stamps)
    catalog = WORK / "stamps.jsonl"
    write_jsonl(iter(rows), catalog)
    # The LLM row is the LLM's order alone, so any blend weight can be rebuilt from it.
    config = EngineConfig.load(clip={"enabled": True}, store={"data_dir": WORK / "store"},
                               rerank={"search_blend_weight": 1.0})
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
        runs, orders, seconds, reranked = {}, {}, {}, {}
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
            orders[label] = {qid: [h.record.id for h in result.hits]
                             for qid, result in results.items()}
            runs[label] = {qid: ranking_to_run(ids) for qid, ids in orders[label].items()}
            if row["rerank"]:  # the pace estimate may stop the LLM short of the budget
                reranked[label] = sum(r.reranked for r in results.values()) / len(results)
        if engine.clip is None:
            print("caption-to-image retrieval skipped: CLIP weights are not on this machine")
        made = from_engine(engine.info(), f"Tux Paint stamps: {len(rows):,} captions indexed, "
                           f"{len(queries)} folder-name queries (the stamps under a folder "
                           "are its relevant items)")
        if LLM_ROW not in orders:  # loaded but no row used it (--no-llm)
            made = replace(made, models={role: text for role, text in made.models.items()
                                         if role != "LLM re-ranker"})
    finally:
        engine.close()
    blend = None
    if LLM_ROW in orders and reranked[LLM_ROW] < HEAD:
        # A blend rebuilt from partly scored lists would be a different re-ranker.
        print(f"search blend weight not chosen: the LLM scored {reranked[LLM_ROW]:.1f} of "
              f"{HEAD} candidates a query; rerun on a quiet machine or with a larger "
              "--budget-ms")
    elif LLM_ROW in orders:
        blend = choose_search_blend(qrels, orders)
    report(queries, qrels, runs, seconds, reranked, blend, made)


def is_validation(query_id: str) -> bool:
    """The fixed half of the queries the search blend weight is chosen on."""
    return zlib.crc32(query_id.encode()) % 2 == 0


def blended(fused: list[str], by_llm: list[str], weight: float) -> list[str]:
    """The fused list re-ordered by the served blend of fused and LLM ranks (stage.merge_order)."""
    llm_rank = {item: rank for rank, item in enumerate(by_llm)}
    scores = [-float(llm_rank.get(item, len(by_llm))) for item in fused]  # higher is better
    return [fused[i] for i in merge_order(scores, Blend(weight))]


def choose_search_blend(qrels: dict, orders: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """The search blend weight chosen on the validation half, and its test-half nDCG@10."""
    fused, by_llm = orders[BASE], orders[LLM_ROW]
    halves = {"validation": [q for q in fused if is_validation(q)],
              "test": [q for q in fused if not is_validation(q)]}

    def ndcgs(weight: float, half: str) -> np.ndarray:
        run = {q: ranking_to_run(blended(fused[q], by_llm[q], weight)) for q in halves[half]}
        per_query = per_query_ndcg({q: qrels[q] for q in halves[half]}, run)
        return np.asarray([per_query.get(q, 0.0) for q in halves[half]], float)

    trials = {w: ndcgs(w, "validation") for w in BLEND_GRID}
    best = max(trials, key=lambda w: (float(trials[w].mean()), -w))
    chosen = best if clear_gain(trials[best], trials[0.0]) else 0.0
    return {"queries": {h: len(qs) for h, qs in halves.items()}, "chosen": chosen,
            "validation_trials": {w: float(v.mean()) for w, v in trials.items()},
            "test": {"hybrid": float(ndcgs(0.0, "test").mean()),
                     "blend": float(ndcgs(chosen, "test").mean()),
                     "llm alone": float(ndcgs(1.0, "test").mean())}}


def per_query_ndcg(qrels: dict, run: dict) -> dict[str, float]:
    """nDCG@10 of each query."""
    return {q: m["nDCG@10"] for q, m in evaluate_qrels_per_query(qrels, run, (10,)).items()}


def report(queries: dict[str, str], qrels: dict, runs: dict, seconds: dict,
           reranked: dict[str, float], blend: dict[str, Any] | None,
           provenance: Provenance) -> None:
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
    if blend is not None:
        test = blend["test"]
        text += (f"\nSearch blend weight (`rerank.search_blend_weight`) chosen on "
                 f"{blend['queries']['validation']} validation queries: **{blend['chosen']}** "
                 f"(nDCG@10 per weight {_rounded(blend['validation_trials'])}; kept only if "
                 f"its gain over the hybrid is > 2 SE, else 0). On the other "
                 f"{blend['queries']['test']} queries, nDCG@10: hybrid {test['hybrid']:.3f}, "
                 f"blend at the chosen weight {test['blend']:.3f}, LLM order alone "
                 f"{test['llm alone']:.3f}.\n")
        data["search_blend"] = blend
    if LLM_ROW in runs:
        before = per_query_ndcg(qrels, runs[BASE])
        after = per_query_ndcg(qrels, runs[LLM_ROW])
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
    write("retrieval_quality", data, text, provenance=provenance)
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


def _rounded(trials: dict[float, float]) -> dict[float, float]:
    return {w: round(v, 3) for w, v in trials.items()}


if __name__ == "__main__":
    main()
