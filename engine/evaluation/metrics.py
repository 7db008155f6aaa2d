"""Rank metrics: NDCG@k and Recall@k of held-out items, and graded qrels through ir-measures.

Next-item evaluation has one relevant item per user, so its metrics follow from
that item's 1-based rank among the candidates: NDCG@k = 1 / log2(rank + 1) and
Recall@k = 1 when rank <= k, else 0 (the numbers ir-measures gives for one
relevant item; ``tests/test_evaluation.py`` checks it). :func:`target_ranks`
gets the ranks from a full score matrix with each user's history masked. Search
benchmarks have graded relevance and many relevant documents; they go through
:func:`evaluate_qrels`, i.e. ir-measures, rather than hand-written IR math
(imported inside the functions that use it, so training loads this without it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_KS",
    "Qrels",
    "Run",
    "evaluate_qrels",
    "evaluate_qrels_per_query",
    "mean_metrics",
    "metrics_from_ranks",
    "ranking_to_run",
    "target_ranks",
]

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)
"""Cutoffs reported by default: 10 is the headline, 20 and 50 show what sits just below."""

Qrels = Mapping[str, Mapping[str, int]]
"""Graded relevance, ``{query_id: {doc_id: relevance}}`` (as sentence-transformers takes it)."""
Run = Mapping[str, Mapping[str, float]]
"""A system's output, ``{query_id: {doc_id: score}}``, higher is better."""


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-user NDCG@k and Recall@k from 1-based target ranks (``inf`` = not ranked)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks <= k
        gain = np.zeros_like(ranks)
        gain[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
        out[f"NDCG@{k}"] = gain
        out[f"Recall@{k}"] = hit.astype(np.float64)
    return out


def neighbour_recall(found: Sequence[Sequence[int]], exact: np.ndarray) -> float:
    """Mean recall@k of an approximate search's ids against the exact top k (ANN recall).

    ``exact[q]`` holds query q's k true nearest ids; ``found[q]`` what the index returned.
    """
    return float(np.mean([len(set(f) & set(e.tolist())) / len(e)
                          for f, e in zip(found, exact, strict=True)]))


def target_ranks(scores: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray,
                 *, mask_seen_target: bool = False) -> np.ndarray:
    """1-based rank of each target among the items not in its history, ties pessimistic.

    ``scores[u]`` scores every item (column = item index) for ``histories[u]``
    (item indices); ``targets[u]`` is the held-out item index. Rank = 1 + the
    number of unmasked items scoring at least as high as the target, so ties count
    against it: a constant scorer earns nothing and item order does not matter.

    A target that is also in its history is where the callers differ. The benchmark
    protocol (default) never masks the target: it competes like an unseen item.
    Training validation (``mask_seen_target=True``) masks it with the rest of the
    history, as the engine never recommends a seen item: it then ties with the
    masked items and ranks last (``n_items``), which is what the training loop
    has always scored it.
    """
    scores = np.array(scores, dtype=np.float64)  # a copy: masking must not touch the caller's
    if scores.ndim != 2 or scores.shape[0] != len(histories) or len(targets) != len(histories):
        raise ValueError(f"scores {scores.shape} do not match {len(histories)} histories")
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    if not np.all(np.isfinite(target_scores)):
        raise ValueError("a target has a non-finite score")
    for row, seen in enumerate(histories):
        scores[row, seen] = -np.inf
    if mask_seen_target:
        target_scores = scores[rows, targets]
    else:
        scores[rows, targets] = target_scores
    # every item at or above the target, less the target itself (it always counts once)
    beaten_by = (scores >= target_scores[:, None]).sum(axis=1) - 1
    return beaten_by.astype(np.float64) + 1.0


def mean_metrics(per_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The mean over users of each per-user metric array (``nan`` for no users).

    Summed left to right in user order, as the training loop always summed its
    validation NDCG, so moving it here did not move a single early-stopping
    decision; a pairwise sum (``np.mean``) can differ in the last bit.
    """
    out: dict[str, float] = {}
    for name, values in per_user.items():
        flat = np.asarray(values, dtype=np.float64).ravel().tolist()
        out[name] = sum(flat) / len(flat) if flat else float("nan")
    return out


def ranking_to_run(ranking: Sequence[str]) -> dict[str, float]:
    """A ranked id list as run scores (strictly decreasing, so ties cannot reorder it)."""
    return {doc: float(len(ranking) - i) for i, doc in enumerate(ranking)}


def evaluate_qrels(qrels: Qrels, run: Run, cutoffs: Sequence[int] = (10,)) -> dict[str, float]:
    """Mean Recall@k and nDCG@k over the queries of ``qrels`` (a missing run scores 0).

    Keys are ir-measures' names (``"R@10"``, ``"nDCG@10"``).
    """
    import ir_measures  # here, not at the top: the rank metrics load without it

    measures, full_qrels, full_run = _ir_inputs(qrels, run, cutoffs)
    scores = ir_measures.calc_aggregate(measures, full_qrels, full_run)
    return {str(m): float(v) for m, v in scores.items()}


def evaluate_qrels_per_query(qrels: Qrels, run: Run, cutoffs: Sequence[int] = (10,)
                             ) -> dict[str, dict[str, float]]:
    """Recall@k and nDCG@k of each query of ``qrels``, ``{query_id: {name: value}}``.

    The per-query view of :func:`evaluate_qrels` (same measures, same zero for a
    missing run), for comparing two systems query by query.
    """
    import ir_measures

    measures, full_qrels, full_run = _ir_inputs(qrels, run, cutoffs)
    out: dict[str, dict[str, float]] = {q: {} for q in full_qrels}
    for metric in ir_measures.iter_calc(measures, full_qrels, full_run):
        out[metric.query_id][str(metric.measure)] = float(metric.value)
    return out


def _ir_inputs(qrels: Qrels, run: Run, cutoffs: Sequence[int]
               ) -> tuple[list[Any], dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    """ir-measures' measures and plain-dict inputs; a query without a run gets a dummy doc.

    The dummy (never relevant) makes ir-measures score such a query 0 instead of
    leaving it out of the mean.
    """
    from ir_measures import R, nDCG

    measures = [m @ k for k in cutoffs for m in (R, nDCG)]
    full_run = {q: dict(run.get(q, {})) or {"__none__": 0.0} for q in qrels}
    return measures, {q: dict(d) for q, d in qrels.items()}, full_run
