"""Offline evaluation: the leave-one-out split and the rank metrics (recommenders, search, ANN).

- :func:`leave_one_out` holds out each user's most recent events
  (:mod:`engine.evaluation.split`);
- :func:`target_ranks` ranks each held-out item in a full score matrix with the
  user's history masked, :func:`metrics_from_ranks` turns ranks into per-user
  NDCG@k and Recall@k, :func:`mean_metrics` averages them, :func:`neighbour_recall`
  scores an ANN index against exact search, and
  :func:`evaluate_qrels` (and :func:`evaluate_qrels_per_query`) score graded
  relevance through ir-measures
  (:mod:`engine.evaluation.metrics`).

Why written once: the training loop's early stopping (``mmrec train-seq``) and
the benchmarks (``benchmarks/``) report "validation NDCG@10" with the same name,
and used to compute it with three NDCG implementations and two splits with
different thresholds. With one of each, a training number and a benchmark
number mean the same thing, and a fix to either lands in both. This package
imports only numpy and the standard library (ir-measures lazily), no torch and
nothing else of the engine, so benchmarks and tests load it cheaply.
"""

from engine.evaluation.metrics import (
    DEFAULT_KS,
    Qrels,
    Run,
    evaluate_qrels,
    evaluate_qrels_per_query,
    mean_metrics,
    metrics_from_ranks,
    neighbour_recall,
    ranking_to_run,
    target_ranks,
)
from engine.evaluation.split import Events, LeftOut, leave_one_out

__all__ = [
    "DEFAULT_KS",
    "Events",
    "LeftOut",
    "Qrels",
    "Run",
    "evaluate_qrels",
    "evaluate_qrels_per_query",
    "leave_one_out",
    "mean_metrics",
    "metrics_from_ranks",
    "neighbour_recall",
    "ranking_to_run",
    "target_ranks",
]
