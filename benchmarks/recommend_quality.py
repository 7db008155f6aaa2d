"""Recommendation quality on MovieLens-100k: baselines, SASRec, content, mmrec, mmrec + LLM.

Protocol (``benchmarks.recommend.protocol``): every rating is an interaction,
users with 5+ interactions, time order (ties by item id), leave-one-out, full
ranking with the history masked, NDCG@10 and Recall@10/20/50. Settings are
chosen on validation and reported on test as mean and standard error over the
seeds (deterministic rows have SE 0). Every model is fitted on what the stage
may see: SASRec is early-stopped on validation, then trained afresh on training
plus validation items for the best epoch count (``mmrec train-seq``'s refit; the
"not refit" row is the first model at test). The mmrec rows run the real engine
(``benchmarks.recommend.engine_runs``); its channel weights and fusion are chosen
on validation (seed 0). The LLM row re-ranks the top 20 of the hybrid list for a
fixed random subset of users (CPU time), compared with the hybrid row on the same
users.

    python -m benchmarks.recommend_quality [--seeds 0 1 2] [--llm-users 100] [--llm-seeds 3]
"""

from __future__ import annotations

import argparse
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.recommend.baselines import Ease, ItemKnn, Popularity, fit_and_evaluate, tune
from benchmarks.recommend.engine_runs import EngineHarness, item_id
from benchmarks.recommend.protocol import (
    Split,
    evaluate_rankings,
    evaluate_scores,
    load_movielens,
    protocol_split,
    summarize,
)
from benchmarks.report import RESULTS, Provenance, from_engine, markdown_table, real_weights, write
from engine.behaviour.sequential import SequentialModel, SequentialSettings, train_sequential
from engine.domain import Fusion
from engine.evaluation import mean_metrics

WORK = Path(".mmrec/bench/recommend")
METRICS = ("NDCG@10", "Recall@10", "Recall@20", "Recall@50")
FUSIONS: list[tuple[Fusion, int]] = [("rrf", 10), ("rrf", 60), ("dbsf", 0)]
"""Fusion settings of the hybrid grid: RRF with k 10 and 60, and DBSF."""
HYBRID_GRID = [({"behaviour": 1.0, "cooccurrence": c, "fused": f}, fusion, k)
               for fusion, k in FUSIONS for c in (0.5, 1.0, 2.0) for f in (0.0, 0.25)]


def sasrec_scores(model: SequentialModel, split: Split) -> Callable[[list[np.ndarray]], np.ndarray]:
    """A full-ranking score function over the protocol's item indices."""
    ids = [item_id(raw) for raw in split.data.item_ids]
    column = {item: c for c, item in enumerate(model.item_ids)}
    where = np.array([column.get(i, -1) for i in ids])

    def score(histories: list[np.ndarray]) -> np.ndarray:
        logits = model.scores([[ids[i] for i in h] for h in histories])
        out = np.full((len(histories), len(ids)), logits.min() - 1.0, dtype=np.float32)
        known = where >= 0
        out[:, known] = logits[:, where[known]]
        return out

    return score


def subset_metrics(ranks: dict[int, list[int]], users: list[int], split: Split
                   ) -> dict[str, float]:
    """Mean metrics over ``users`` only (the LLM row's subset)."""
    per_user = evaluate_rankings(ranks, split, "test")
    return mean_metrics({name: values[users] for name, values in per_user.items()})


def train_seed(split: Split, seed: int, epochs: int) -> tuple[SequentialModel, SequentialModel]:
    """SASRec for each stage: the validation stage's and the test stage's.

    The first is trained on the training sequences and early-stopped on the
    validation items; the second is trained afresh on what the test stage may see
    (training sequences plus validation items) for the first one's best epoch count,
    as ``mmrec train-seq`` does by default (``refit``).
    """
    ids = [item_id(raw) for raw in split.data.item_ids]
    sequences = [[ids[i] for i in s] for s in split.train]
    targets = [ids[i] for i in split.valid]
    settings = SequentialSettings(seed=seed, epochs=epochs)  # the library defaults otherwise
    searched = train_sequential(sequences, settings, valid_targets=targets, progress=True)
    full = [[ids[i] for i in s] for s in split.history("test")]
    refit = train_sequential(full, replace(settings, epochs=searched.facts.best_epoch),
                             progress=True)
    return searched, refit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=SequentialSettings().epochs,
                        help="Most SASRec epochs (early stopping).")
    parser.add_argument("--llm-users", type=int, default=100,
                        help="Users whose lists the LLM re-ranks (0: skip the LLM row).")
    parser.add_argument("--llm-seeds", type=int, default=3,
                        help="Seeds (the first ones) whose lists the LLM re-ranks (CPU time).")
    args = parser.parse_args()
    split = protocol_split(load_movielens())
    print(f"MovieLens-100k: {split.n_users} users, {split.n_items} items, "
          f"{split.data.n_events} interactions; seeds {args.seeds}")
    rows: dict[str, list[dict[str, float]]] = {}
    notes: dict[str, Any] = {}
    started = time.perf_counter()

    pop = mean_metrics(fit_and_evaluate(Popularity(), split, "test"))
    knn = tune(ItemKnn, {"neighbours": [None, 50, 200], "decay": [0.9, 0.7, 0.5, 0.3]}, split)
    ease = tune(Ease, {"l2": [100, 300, 500, 1000]}, split)
    rows["popularity"] = [pop]
    rows["item-kNN (recency-weighted)"] = [mean_metrics(fit_and_evaluate(
        ItemKnn(**knn.best), split, "test"))]
    rows["EASE"] = [mean_metrics(fit_and_evaluate(Ease(**ease.best), split, "test"))]
    notes["item-kNN"], notes["EASE"] = knn.best, ease.best

    harness = EngineHarness(split, WORK / "engine", load_reranker=args.llm_users > 0)
    try:
        rng = np.random.default_rng(0)
        llm_users = sorted(rng.choice(split.n_users, min(args.llm_users, split.n_users),
                                      replace=False).tolist()) if args.llm_users else []
        content = {"behaviour": 0.0, "cooccurrence": 0.0, "fused": 1.0}
        cooccurrence = {"behaviour": 0.0, "cooccurrence": 1.0, "fused": 0.0}
        best: dict[str, float] = {}
        best: tuple[dict[str, float], Fusion, int] = HYBRID_GRID[0]
        for n, seed in enumerate(args.seeds):
            searched, model = train_seed(split, seed, args.epochs)
            notes.setdefault("sasrec_epochs", []).append(searched.facts.best_epoch)
            rows.setdefault("SASRec alone, not refit", []).append(
                mean_metrics(evaluate_scores(sasrec_scores(searched, split), split, "test")))
            rows.setdefault("SASRec alone", []).append(
                mean_metrics(evaluate_scores(sasrec_scores(model, split), split, "test")))
            if n == 0:  # channel weights and fusion chosen on validation, once
                harness.use_model(searched)
                trials = []
                for weights, fusion, k in HYBRID_GRID:
                    ranks = harness.rankings(weights, fusion=fusion, rrf_k=k,
                                             label=f"valid {fusion} {k} {weights}")
                    ndcg = mean_metrics(evaluate_rankings(ranks, split, "valid"))["NDCG@10"]
                    trials.append((ndcg, (weights, fusion, k)))
                best = max(trials, key=lambda t: t[0])[1]
                notes["hybrid"] = {"weights": best[0], "fusion": best[1], "rrf_k": best[2]}
                notes["hybrid_valid_trials"] = [(*setting, round(v, 4)) for v, setting in trials]
                harness.advance_to_test()
                rows["content only (MiniLM title + genres)"] = [mean_metrics(evaluate_rankings(
                    harness.rankings(content, label="content"), split, "test"))]
                rows["mmrec co-occurrence channel alone"] = [mean_metrics(evaluate_rankings(
                    harness.rankings(cooccurrence, label="co-occurrence"), split, "test"))]
            harness.use_model(model)
            weights, fusion, k = best
            hybrid = harness.rankings(weights, fusion=fusion, rrf_k=k, label=f"hybrid seed {seed}")
            rows.setdefault("mmrec hybrid", []).append(
                mean_metrics(evaluate_rankings(hybrid, split, "test")))
            if llm_users and n < args.llm_seeds:
                rows.setdefault(f"mmrec hybrid, same {len(llm_users)} users", []).append(
                    subset_metrics(hybrid, llm_users, split))
                reranked = harness.rankings(weights, fusion=fusion, rrf_k=k, users=llm_users,
                                            rerank=True, label=f"LLM seed {seed}")
                rows.setdefault(f"mmrec hybrid + LLM re-rank, {len(llm_users)} users",
                                []).append(subset_metrics(reranked, llm_users, split))
        made = provenance(harness, split, args)
    finally:
        harness.close()
    report(rows, notes, split, args, time.perf_counter() - started, made)


def provenance(harness: EngineHarness, split: Split, args: argparse.Namespace) -> Provenance:
    """The split, the engine's models (text encoder, CLIP off, the LLM when loaded) and the
    models fitted here, every row's; the engine's store and device."""
    fitted = {"SASRec": real_weights(f"SASRec trained here per seed {args.seeds} (early-stopped "
                                     "on validation, then refit)"),
              "co-occurrence": "embeddings fitted here on each stage's events",
              "baselines": "popularity, recency-weighted item-kNN, EASE (fitted here)"}
    return from_engine(harness.engine.info(), split.describe() + ", test stage", fitted)


def report(rows: dict[str, list[dict[str, float]]], notes: dict[str, Any], split: Split,
           args: argparse.Namespace, seconds: float, provenance: Provenance) -> None:
    """Table (mean ± SE), JSON, Markdown and a bar plot."""
    summary = {label: summarize(runs) if len(runs) > 1 else
               {k: (v, 0.0) for k, v in runs[0].items()} for label, runs in rows.items()}
    table = markdown_table(
        ["model", *METRICS, "seeds"],
        [[label, *(f"{s[m][0]:.4f} ± {s[m][1]:.4f}" for m in METRICS), len(rows[label])]
         for label, s in summary.items()])
    text = (f"# Recommendation quality: MovieLens-100k, leave-one-out, full ranking\n\n"
            f"{split.n_users} users, {split.n_items} items; test stage; mean ± standard error "
            f"over seeds {args.seeds} (rows with one seed are deterministic). Text encoder "
            f"all-MiniLM-L6-v2, CLIP off (no weights), LLM SmolLM2-135M-Instruct. Settings "
            f"chosen on validation: {notes}.\n\n{table}\n\nTotal {seconds / 60:.1f} min on "
            f"this machine.\n")
    print(text)
    write("recommend_quality", {"rows": rows, "summary": summary, "notes": notes}, text,
          provenance=provenance)
    plot(summary)


def plot(summary: dict[str, dict[str, tuple[float, float]]]) -> None:
    """Bars of NDCG@10 and Recall@10 per row, with standard errors (``recommend_quality.png``)."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    labels = list(summary)
    xs = np.arange(len(labels))
    for offset, metric in ((-0.2, "NDCG@10"), (0.2, "Recall@10")):
        ax.bar(xs + offset, [summary[k][metric][0] for k in labels], 0.4,
               yerr=[summary[k][metric][1] for k in labels], label=metric)
    ax.set_xticks(xs, [textwrap.fill(k, 16) for k in labels], fontsize=7)
    ax.set_title("MovieLens-100k, leave-one-out, full ranking (test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "recommend_quality.png", dpi=120)

if __name__ == "__main__":
    main()
