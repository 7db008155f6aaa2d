"""The recommendation protocol and baselines on tiny synthetic data (MovieLens only if present).

The split and the rank metrics themselves are tested in ``tests/test_evaluation.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.recommend.baselines import (
    Ease,
    ItemKnn,
    Popularity,
    fit_and_evaluate,
    interaction_matrix,
    tune,
)
from benchmarks.recommend.protocol import (
    Interactions,
    Split,
    evaluate_rankings,
    evaluate_scores,
    interactions_from_events,
    load_movielens,
    protocol_split,
    summarize,
)
from engine.evaluation import evaluate_qrels, mean_metrics
from indexers.datasets import movielens_dir


def events(rows: list[tuple[str, str, float]], min_events: int = 5) -> Interactions:
    """Interactions from (user, item, time) rows."""
    users, items, times = zip(*rows, strict=True)
    return interactions_from_events(users, items, times, min_events)


def sequences_split(seqs: list[list[int]], n_items: int) -> Split:
    """A split straight from item-index sequences (time = position)."""
    data = Interactions(item_ids=[str(i) for i in range(n_items)],
                        user_ids=[str(u) for u in range(len(seqs))],
                        sequences=[np.array(s, dtype=np.int64) for s in seqs],
                        timestamps=[np.arange(len(s), dtype=np.float64) for s in seqs])
    return protocol_split(data)


def test_sorted_by_time_and_ties_by_numeric_item_id() -> None:
    rows = [("u", "10", 5.0), ("u", "2", 5.0), ("u", "7", 1.0), ("u", "30", 9.0),
            ("u", "1", 3.0), ("u", "9", 5.0)]
    data = events(rows)
    assert data.item_ids == ["1", "2", "7", "9", "10", "30"]  # numeric, not "10" < "2"
    raw = [data.item_ids[i] for i in data.sequences[0]]
    assert raw == ["7", "1", "2", "9", "10", "30"]
    assert data.timestamps[0].tolist() == [1.0, 3.0, 5.0, 5.0, 5.0, 9.0]


def test_non_integer_ids_tie_break_in_string_order() -> None:
    rows = [("u", "b", 1.0), ("u", "a10", 1.0), ("u", "a9", 1.0), ("u", "c", 0.0),
            ("u", "d", 2.0)]
    data = events(rows)
    assert [data.item_ids[i] for i in data.sequences[0]] == ["c", "a10", "a9", "b", "d"]


def test_users_with_fewer_than_five_events_are_dropped() -> None:
    rows = [("keep", str(i), float(i)) for i in range(5)]
    rows += [("drop", str(i), float(i)) for i in (3, 4, 98, 99)]
    data = events(rows)
    assert data.user_ids == ["keep"]
    assert data.item_ids == ["0", "1", "2", "3", "4"]  # 98 and 99 only had the dropped user
    assert data.n_events == 5


def test_protocol_split_targets_and_stage_histories() -> None:
    split = sequences_split([[0, 1, 2, 3, 4], [4, 3, 2]], n_items=5)
    assert split.train[0].tolist() == [0, 1, 2] and split.train[1].tolist() == [4]
    assert split.valid.tolist() == [3, 3] and split.test.tolist() == [4, 2]
    assert [h.tolist() for h in split.history("valid")] == [[0, 1, 2], [4]]
    assert [h.tolist() for h in split.history("test")] == [[0, 1, 2, 3], [4, 3]]
    assert split.targets("test").tolist() == [4, 2]
    with pytest.raises(ValueError):
        split.history("train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fewer than 3"):
        sequences_split([[0, 1]], n_items=2)


def test_history_items_are_masked_and_never_hits() -> None:
    split = sequences_split([[0, 1, 2, 3, 4]], n_items=8)  # train 0,1,2; valid 3; test 4

    def history_first(histories: list[np.ndarray]) -> np.ndarray:
        scores = np.tile(np.arange(8, 0, -1, dtype=np.float64), (len(histories), 1))
        for row, h in enumerate(histories):
            scores[row, h] += 100.0  # seen items score highest: must not push the target
        return scores

    # without masking items 0..3 would rank above 4 at test; masked, 4 ranks first
    assert evaluate_scores(history_first, split, "test")["NDCG@10"].tolist() == [1.0]
    # at validation only the training items are masked: 3 ranks first
    assert evaluate_scores(history_first, split, "valid")["NDCG@10"].tolist() == [1.0]
    # a ranking of seen items then the target: the seen ones are skipped
    assert evaluate_rankings({0: [0, 1, 2, 3, 5, 4]}, split, "test", ks=(1, 2))[
        "Recall@1"].tolist() == [0.0]
    assert evaluate_rankings({0: [0, 1, 2, 3, 5, 4]}, split, "test", ks=(2,))[
        "NDCG@2"].tolist() == [pytest.approx(1 / math.log2(3))]


def test_rankings_missing_target_or_user_score_zero() -> None:
    split = sequences_split([[0, 1, 2, 3], [3, 2, 1, 0]], n_items=6)
    out = evaluate_rankings({0: [5, 4]}, split, "test", ks=(10,))
    assert out["Recall@10"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        evaluate_rankings({7: [1]}, split, "test")


def test_metrics_agree_with_ir_measures() -> None:
    rng = np.random.default_rng(3)
    n_items = 40
    seqs = [rng.choice(n_items, size=rng.integers(3, 12), replace=False).tolist()
            for _ in range(30)]
    split = sequences_split(seqs, n_items)
    scores = rng.random((30, n_items))
    ours = mean_metrics(evaluate_scores(lambda h: scores[:len(h)], split, "test", ks=(10,),
                                        batch=64))
    histories, targets = split.history("test"), split.targets("test")
    qrels = {str(u): {str(targets[u]): 1} for u in range(30)}
    run = {str(u): {str(i): float(scores[u, i]) for i in range(n_items)
                    if i == targets[u] or i not in set(histories[u].tolist())}
           for u in range(30)}
    theirs = evaluate_qrels(qrels, run, cutoffs=(10,))
    assert 0 < ours["NDCG@10"] < 1
    assert ours["NDCG@10"] == pytest.approx(theirs["nDCG@10"], abs=1e-9)
    assert ours["Recall@10"] == pytest.approx(theirs["R@10"], abs=1e-9)


def test_evaluate_scores_rejects_a_wrong_shape() -> None:
    split = sequences_split([[0, 1, 2]], n_items=4)
    with pytest.raises(ValueError, match="expected"):
        evaluate_scores(lambda h: np.zeros((len(h), 3)), split, "valid")


def test_summarize_mean_and_standard_error() -> None:
    out = summarize([{"NDCG@10": 0.1}, {"NDCG@10": 0.2}, {"NDCG@10": 0.3}])
    mean, se = out["NDCG@10"]
    assert mean == pytest.approx(0.2)
    assert se == pytest.approx(0.1 / math.sqrt(3))
    assert summarize([{"a": 1.0}] * 3)["a"] == (1.0, 0.0)
    assert math.isnan(summarize([{"a": 1.0}])["a"][1])


def test_popularity_counts_training_interactions() -> None:
    model = Popularity().fit([np.array([0, 2, 2]), np.array([2, 1])], n_items=4)
    assert model.score([np.array([0]), np.array([3])]).tolist() == [[1, 1, 3, 0]] * 2


def test_ease_matches_the_constrained_least_squares_closed_form() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((25, 7)) < 0.4).astype(np.float64)
    seqs = [np.flatnonzero(row) for row in x]
    l2 = 3.0
    model = Ease(l2).fit(seqs, n_items=7)
    for j in range(7):  # column j: ridge regression of x_j on the other columns
        others = [i for i in range(7) if i != j]
        a = x[:, others]
        coef = np.linalg.solve(a.T @ a + l2 * np.eye(6), a.T @ x[:, j])
        np.testing.assert_allclose(model.weights[others, j], coef, atol=1e-10)
        assert model.weights[j, j] == 0.0
    np.testing.assert_allclose(model.score(seqs[:3]), x[:3] @ model.weights)


def test_item_knn_cosine_and_neighbour_pruning() -> None:
    seqs = [np.array([0, 1]), np.array([0, 1, 2]), np.array([2, 3])]
    x = interaction_matrix(seqs, 4)
    model = ItemKnn().fit(seqs, n_items=4)
    norms = np.linalg.norm(x, axis=0)
    assert model.similarity[0, 1] == pytest.approx(2 / (norms[0] * norms[1]))
    assert model.similarity[0, 2] == pytest.approx(1 / (norms[0] * norms[2]))
    assert np.all(np.diag(model.similarity) == 0)
    pruned = ItemKnn(neighbours=1).fit(seqs, n_items=4)
    assert (pruned.similarity > 0).sum(axis=1).tolist() == [1, 1, 1, 1]
    assert pruned.similarity[0, 1] == model.similarity[0, 1]  # 0's nearest neighbour is 1


def test_item_knn_recency_weighting_favours_the_latest_items_neighbours() -> None:
    # 0 co-occurs with 2 in three users, 1 with 3 in two: with equal weights the history
    # [0, 1] prefers 2; with strong decay the latest item 1 decides and 3 wins.
    seqs = [np.array([0, 2])] * 3 + [np.array([1, 3])] * 2 + [np.array([0, 1])]
    history = [np.array([0, 1])]
    flat = ItemKnn(decay=1.0).fit(seqs, n_items=4).score(history)[0]
    recent = ItemKnn(decay=0.1).fit(seqs, n_items=4).score(history)[0]
    assert flat[2] > flat[3]
    assert recent[3] > recent[2]
    weights = ItemKnn(decay=0.5).fit(seqs, n_items=4).recency_weights([np.array([0, 1, 0])])
    assert weights[0].tolist() == [1.25, 0.5, 0.0, 0.0]  # 0 at age 2 and 0; 1 at age 1


class NextBy:
    """A test model that predicts ``last item + step``; ``fit`` records what it saw."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.n_items = 0
        self.seen_lengths: list[int] = []

    def fit(self, sequences: list[np.ndarray], n_items: int) -> NextBy:
        self.n_items = n_items
        self.seen_lengths = [len(s) for s in sequences]
        return self

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        scores = np.zeros((len(histories), self.n_items))
        for row, h in enumerate(histories):
            scores[row, (h[-1] + self.step) % self.n_items] = 1.0
        return scores


def test_tune_picks_the_setting_that_wins_on_validation() -> None:
    split = sequences_split([list(range(u, u + 5)) for u in range(6)], n_items=30)
    made: list[NextBy] = []

    def make(step: int) -> NextBy:
        made.append(NextBy(step))
        return made[-1]

    result = tune(make, {"step": [2, 1, 3]}, split)
    assert [s for s, _ in result.trials] == [{"step": 2}, {"step": 1}, {"step": 3}]
    assert result.best == {"step": 1} and result.best_score == 1.0
    assert result.trials[0][1] == 0.0  # step 2 hits the test item; its valid rank is 27
    assert all(m.seen_lengths == [3] * 6 for m in made)  # fitted on training only
    refit = NextBy(1)
    test = fit_and_evaluate(refit, split, "test")
    assert refit.seen_lengths == [4] * 6  # refitted on train + the validation item
    assert test["NDCG@10"].tolist() == [1.0] * 6


@pytest.mark.skipif(not (movielens_dir() / "ml-100k.inter").exists(),
                    reason="MovieLens-100k not unpacked (make data)")
def test_movielens_protocol_counts_and_popularity() -> None:
    data = load_movielens()
    assert (data.n_users, data.n_items, data.n_events) == (943, 1682, 100_000)
    assert all(np.all(np.diff(t) >= 0) for t in data.timestamps)
    split = protocol_split(data)
    hits = fit_and_evaluate(Popularity(), split, "test", ks=(10,))["Recall@10"]
    assert int(hits.sum()) == 47  # popularity test Recall@10 = 0.0498, as measured
