"""Ranking metrics for every benchmark, through ir-measures (no hand-written IR math).

Inputs are plain dicts, as sentence-transformers' evaluators take them:
``qrels = {query_id: {doc_id: relevance}}`` and ``run = {query_id: {doc_id: score}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ir_measures
from ir_measures import R, nDCG

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def ranking_to_run(ranking: Sequence[str]) -> dict[str, float]:
    """A ranked id list as run scores (strictly decreasing, so ties cannot reorder it)."""
    return {doc: float(len(ranking) - i) for i, doc in enumerate(ranking)}


def evaluate(qrels: Qrels, run: Run, cutoffs: Sequence[int] = (10,)) -> dict[str, float]:
    """Mean Recall@k and nDCG@k over the queries of ``qrels`` (a missing run scores 0)."""
    measures = [m @ k for k in cutoffs for m in (R, nDCG)]
    full_run = {q: dict(run.get(q, {})) or {"__none__": 0.0} for q in qrels}
    scores = ir_measures.calc_aggregate(measures, {q: dict(d) for q, d in qrels.items()},
                                        full_run)
    return {str(m): float(v) for m, v in scores.items()}
