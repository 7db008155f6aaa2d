"""Classical recommendation baselines, and a grid search of their settings on validation.

Each baseline has ``fit(sequences, n_items)`` (time-ordered item-index arrays, one per
user) and ``score(histories) -> [len(histories), n_items]``. At each stage a model is
fitted on exactly what it may see then (`Split.history`): the training sequences for
validation, training + validation item (a refit) for test. Dense numpy throughout:
MovieLens-100k's 1,682 items make an item-item matrix of 22 MB.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

import numpy as np

from benchmarks.recommend.protocol import Split, Stage, evaluate_scores
from engine.evaluation import DEFAULT_KS, mean_metrics


class Recommender(Protocol):
    """What the protocol needs from a model: fit on sequences, score every item."""

    def fit(self, sequences: Sequence[np.ndarray], n_items: int) -> Self:
        """Learn from time-ordered item-index sequences over ``n_items`` items."""
        ...

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores ``[len(histories), n_items]`` for the next item, higher is better."""
        ...


def interaction_matrix(sequences: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Binary user-item matrix ``[len(sequences), n_items]`` (a repeat counts once)."""
    x = np.zeros((len(sequences), n_items), dtype=np.float64)
    for row, seq in enumerate(sequences):
        x[row, seq] = 1.0
    return x


class Popularity:
    """Scores every item by how many training interactions it has, whatever the history."""

    def __init__(self) -> None:
        self.counts = np.zeros(0)

    def fit(self, sequences: Sequence[np.ndarray], n_items: int) -> Self:
        """Count each item's interactions."""
        flat = np.concatenate(list(sequences)) if sequences else np.zeros(0, dtype=np.int64)
        self.counts = np.bincount(flat, minlength=n_items).astype(np.float64)
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The same popularity row for every history."""
        return np.broadcast_to(self.counts, (len(histories), len(self.counts))).copy()


class ItemKnn:
    """Item-kNN with recency weighting: recent history items vote more for their neighbours.

    Similarity is the cosine between item columns of the binary user-item matrix (self
    similarity 0). With ``neighbours`` set, each item keeps only its ``neighbours`` most
    similar items (row-wise: a history item votes for its nearest items only). A user's
    score for item j is ``sum_p decay ** (len - 1 - p) * sim[history[p], j]``: the latest
    event has weight 1, and ``decay = 1`` is plain item-kNN.
    """

    def __init__(self, neighbours: int | None = None, decay: float = 1.0) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], not {decay}")
        if neighbours is not None and neighbours < 1:
            raise ValueError(f"neighbours must be positive or None, not {neighbours}")
        self.neighbours = neighbours
        self.decay = decay
        self.similarity = np.zeros((0, 0))

    def fit(self, sequences: Sequence[np.ndarray], n_items: int) -> Self:
        """Cosine item-item similarity, pruned to the top neighbours per item."""
        x = interaction_matrix(sequences, n_items)
        gram = x.T @ x
        norms = np.sqrt(np.diag(gram))
        norms[norms == 0] = 1.0
        sim = gram / norms[:, None] / norms[None, :]
        np.fill_diagonal(sim, 0.0)
        if self.neighbours is not None and self.neighbours < n_items:
            drop = np.argpartition(-sim, self.neighbours, axis=1)[:, self.neighbours:]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        self.similarity = sim
        return self

    def recency_weights(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """``[len(histories), n_items]``: each history item's summed recency weight."""
        w = np.zeros((len(histories), self.similarity.shape[0]))
        for row, seq in enumerate(histories):
            ages = np.arange(len(seq) - 1, -1, -1, dtype=np.float64)
            np.add.at(w[row], seq, self.decay ** ages)
        return w

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Recency-weighted sum of the history items' similarity rows."""
        return self.recency_weights(histories) @ self.similarity


class Ease:
    """EASE (Steck 2019): a closed-form item-item linear model with a zero diagonal.

    ``B = I - P diag(1 / diag(P))`` with ``P = (X^T X + l2 I)^-1``, so ``B_ij =
    -P_ij / P_jj`` off the diagonal and ``B_jj = 0``; scores are ``x_history B``.
    """

    def __init__(self, l2: float = 500.0) -> None:
        if l2 <= 0:
            raise ValueError(f"l2 must be positive, not {l2}")
        self.l2 = l2
        self.weights = np.zeros((0, 0))

    def fit(self, sequences: Sequence[np.ndarray], n_items: int) -> Self:
        """Solve the closed form on the binary user-item matrix."""
        x = interaction_matrix(sequences, n_items)
        gram = x.T @ x
        gram[np.diag_indices(n_items)] += self.l2
        p = np.linalg.inv(gram)
        b = p / -np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        self.weights = b
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The binary history row times the learned item-item weights."""
        return interaction_matrix(histories, self.weights.shape[0]) @ self.weights


def fit_and_evaluate(model: Recommender, split: Split, stage: Stage,
                     ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Fit on what the model may see at ``stage`` and return its per-user metrics there."""
    model.fit(split.history(stage), split.n_items)
    return evaluate_scores(model.score, split, stage, ks)


@dataclass
class Tuning:
    """Outcome of a grid search: the best settings and every setting's validation score."""

    best: dict[str, Any]
    best_score: float
    metric: str
    trials: list[tuple[dict[str, Any], float]] = field(default_factory=list)


def tune(make: Callable[..., Recommender], grid: Mapping[str, Sequence[Any]], split: Split,
         metric: str = "NDCG@10") -> Tuning:
    """Grid search of ``make(**settings)`` on the validation stage, by mean ``metric``.

    The first setting in grid order wins a tie, so list the simpler settings first.
    """
    names = list(grid)
    if not names:
        raise ValueError("empty grid")
    k = int(metric.split("@")[1])
    trials: list[tuple[dict[str, Any], float]] = []
    for values in itertools.product(*(grid[n] for n in names)):
        settings = dict(zip(names, values, strict=True))
        per_user = fit_and_evaluate(make(**settings), split, "valid", ks=(k,))
        trials.append((settings, mean_metrics(per_user)[metric]))
    best, best_score = max(trials, key=lambda t: t[1])  # max keeps the first of equals
    return Tuning(best=best, best_score=best_score, metric=metric, trials=trials)
