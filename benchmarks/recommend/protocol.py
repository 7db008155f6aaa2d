"""The recommendation protocol on MovieLens: implicit interactions, leave-one-out by time.

Fixed by issue 5, so every model is measured the same way. This module holds what
is benchmark specific (loading MovieLens, the two-stage `Split`, the score-function
and top-N-list helpers, the summary over seeds); the split itself and the rank
metrics are :mod:`engine.evaluation`'s, shared with training:

- every rating is an interaction (the rating value is ignored); users with fewer than
  ``min_events`` (5) interactions are dropped (one pass, items are not filtered);
- each user's interactions are sorted by timestamp, ties broken by item index; item
  indices follow the numeric order of the raw ids when all are integers ("2" < "10"),
  their string order otherwise, so the tie-break is that order of the raw ids. This is
  not a detail on MovieLens-100k: 415 of 943 users rated their last two films in the
  same second, and the ascending-id rule makes the higher-id (later catalogued, less
  popular) film the test target, which lowers non-sequential models' test scores;
- the last interaction is the test target, the one before it the validation target,
  the rest is training (``engine.evaluation.leave_one_out`` with its defaults). At the
  validation stage a model sees the training items; at the test stage the training
  items plus the validation item;
- every item is ranked (full ranking); the items the model saw at that stage are masked
  out, the target never is. Rank = 1 + the number of unmasked items scoring at least as
  high as the target (ties count against the target, so a constant scorer earns
  nothing and the result does not depend on item order): ``engine.evaluation.target_ranks``;
- with one relevant item, NDCG@k = 1/log2(rank + 1) and Recall@k = 1 when rank <= k,
  else 0 (``engine.evaluation.metrics_from_ranks``; the same numbers as ir-measures).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from engine.evaluation import DEFAULT_KS, leave_one_out, metrics_from_ranks, target_ranks
from indexers.datasets import movielens_dir

Stage = Literal["valid", "test"]
ScoreFn = Callable[[list[np.ndarray]], np.ndarray]
"""Scores every item for a batch of histories: ``[batch, n_items]``, higher is better."""

MIN_EVENTS = 5
"""Users with fewer interactions are dropped when loading (so each has the 3 a split needs)."""


@dataclass(frozen=True)
class Interactions:
    """Implicit interactions: per user, the item indices in time order and their timestamps.

    ``item_ids[i]`` is the raw id of item index ``i``; ``user_ids[u]`` the raw id of user
    ``u``; ``sequences[u]`` (int64) and ``timestamps[u]`` (float64) are aligned.
    """

    item_ids: list[str]
    user_ids: list[str]
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray]

    @property
    def n_items(self) -> int:
        """Size of the item vocabulary (every item any kept user interacted with)."""
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        """Number of kept users."""
        return len(self.user_ids)

    @property
    def n_events(self) -> int:
        """Number of kept interactions."""
        return sum(len(s) for s in self.sequences)


def _id_order(ids: Sequence[str]) -> list[str]:
    """Distinct ids in numeric order when all are integers, in string order otherwise."""
    distinct = set(ids)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def interactions_from_events(users: Sequence[str], items: Sequence[str],
                             timestamps: Sequence[float],
                             min_events: int = MIN_EVENTS) -> Interactions:
    """Group (user, item, time) events into per-user time-sorted sequences.

    Users with fewer than ``min_events`` events are dropped before the item vocabulary
    is built, so every item index belongs to at least one kept user's sequence.
    """
    if not len(users) == len(items) == len(timestamps):
        raise ValueError("users, items and timestamps must have the same length")
    by_user: dict[str, list[int]] = {}
    for row, user in enumerate(users):
        by_user.setdefault(user, []).append(row)
    kept = {u: rows for u, rows in by_user.items() if len(rows) >= min_events}
    item_ids = _id_order([items[r] for rows in kept.values() for r in rows])
    item_index = {item: i for i, item in enumerate(item_ids)}
    user_ids = _id_order(list(kept))
    sequences, times = [], []
    for user in user_ids:
        rows = kept[user]
        idx = np.array([item_index[items[r]] for r in rows], dtype=np.int64)
        ts = np.array([timestamps[r] for r in rows], dtype=np.float64)
        order = np.lexsort((idx, ts))  # by time, then by item index
        sequences.append(idx[order])
        times.append(ts[order])
    return Interactions(item_ids, user_ids, sequences, times)


def load_movielens(folder: Path | None = None, min_events: int = MIN_EVENTS) -> Interactions:
    """MovieLens-100k's ``ml-100k.inter`` (RecBole atomic format) as implicit interactions."""
    path = (folder or movielens_dir()) / "ml-100k.inter"
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        col = {name: header.index(name) for name in ("user_id", "item_id", "timestamp")}
        rows = [r for r in reader if r]
    return interactions_from_events([r[col["user_id"]] for r in rows],
                                    [r[col["item_id"]] for r in rows],
                                    [float(r[col["timestamp"]]) for r in rows], min_events)


@dataclass(frozen=True)
class Split:
    """Leave-one-out split: per user a training sequence, a validation and a test target."""

    data: Interactions
    train: list[np.ndarray]
    valid: np.ndarray
    test: np.ndarray

    @property
    def n_items(self) -> int:
        """Size of the item vocabulary every score row must cover."""
        return self.data.n_items

    @property
    def n_users(self) -> int:
        """Number of evaluated users (every kept user)."""
        return len(self.train)

    def history(self, stage: Stage) -> list[np.ndarray]:
        """What a model may see (fit on, and condition on) at ``stage``, oldest first."""
        if stage == "valid":
            return self.train
        if stage == "test":
            return [np.append(t, v) for t, v in zip(self.train, self.valid, strict=True)]
        raise ValueError(f"stage must be 'valid' or 'test', not {stage!r}")

    def targets(self, stage: Stage) -> np.ndarray:
        """The held-out item index per user at ``stage``."""
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', not {stage!r}")
        return self.valid if stage == "valid" else self.test

    def describe(self, log: str = "MovieLens-100k") -> str:
        """The data set and its size in words, for a result's provenance."""
        return (f"{log}, {self.n_users:,} users, {self.n_items:,} films, "
                f"{self.data.n_events:,} interactions, leave-one-out by time")


def protocol_split(data: Interactions) -> Split:
    """Last interaction = test, second to last = validation, the rest = training.

    ``engine.evaluation.leave_one_out`` with its defaults (two held out, every user
    split: a user with fewer than 3 interactions is a ``ValueError``).
    """
    train, held_out = leave_one_out(data.sequences)
    return Split(data=data, train=train,
                 valid=np.array([h[0] for h in held_out], dtype=np.int64),
                 test=np.array([h[1] for h in held_out], dtype=np.int64))


def evaluate_scores(score_fn: ScoreFn, split: Split, stage: Stage,
                    ks: Sequence[int] = DEFAULT_KS, batch: int = 256) -> dict[str, np.ndarray]:
    """Per-user metrics of a full-ranking scorer at ``stage``, one array entry per user."""
    histories, targets = split.history(stage), split.targets(stage)
    ranks = np.empty(split.n_users, dtype=np.float64)
    for start in range(0, split.n_users, batch):
        chunk = histories[start:start + batch]
        scores = np.asarray(score_fn(chunk))
        if scores.shape != (len(chunk), split.n_items):
            raise ValueError(f"score_fn returned {scores.shape}, "
                             f"expected {(len(chunk), split.n_items)}")
        ranks[start:start + len(chunk)] = target_ranks(scores, chunk,
                                                       targets[start:start + len(chunk)])
    return metrics_from_ranks(ranks, ks)


def evaluate_rankings(rankings: Mapping[int, Sequence[int]], split: Split, stage: Stage,
                      ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-user metrics of top-N lists keyed by user index (position in ``split``).

    Items of the user's history at ``stage`` are dropped from the list before ranking
    (the same mask as `evaluate_scores`); a target missing from the list, or a user
    missing from ``rankings``, scores 0.
    """
    histories, targets = split.history(stage), split.targets(stage)
    ranks = np.full(split.n_users, np.inf)
    for user, ranking in rankings.items():
        if not 0 <= user < split.n_users:
            raise ValueError(f"user index {user} out of range 0..{split.n_users - 1}")
        target = int(targets[user])
        seen = set(histories[user].tolist()) - {target}
        position = 0
        for item in ranking:
            if int(item) in seen:
                continue
            position += 1
            if int(item) == target:
                ranks[user] = position
                break
    return metrics_from_ranks(ranks, ks)


def summarize(per_seed: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and standard error (sample std / sqrt(n)) of each metric across seeds.

    One seed gives a standard error of ``nan`` (unknown, not zero); deterministic
    models give identical numbers per seed and an honest 0.
    """
    if not per_seed:
        raise ValueError("no seeds to summarize")
    out: dict[str, tuple[float, float]] = {}
    for name in per_seed[0]:
        values = np.array([run[name] for run in per_seed], dtype=np.float64)
        se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
        out[name] = (float(values.mean()), se)
    return out
