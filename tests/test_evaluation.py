"""engine.evaluation: the one leave-one-out split and the one set of rank metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.evaluation import (
    evaluate_qrels,
    evaluate_qrels_per_query,
    leave_one_out,
    mean_metrics,
    metrics_from_ranks,
    ranking_to_run,
    target_ranks,
)


def arrays(seqs: list[list[int]]) -> list[np.ndarray]:
    """Item-index sequences as the benchmarks hold them (int64 arrays)."""
    return [np.array(s, dtype=np.int64) for s in seqs]


def test_leave_one_out_holds_out_the_last_two_by_default() -> None:
    histories, held_out = leave_one_out(arrays([[0, 1, 2, 3, 4], [4, 3, 2]]))
    assert [h.tolist() for h in histories] == [[0, 1, 2], [4]]
    assert [h.tolist() for h in held_out] == [[3, 4], [3, 2]]  # validation, then test
    with pytest.raises(ValueError, match="fewer than 3"):
        leave_one_out(arrays([[0, 1]]))


def test_leave_one_out_with_the_training_parameters_keeps_short_users_whole() -> None:
    users = [[], ["a"], ["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"]]
    histories, held_out = leave_one_out(users, held_out=1, min_history=2, keep_short=True)
    assert histories == [[], ["a"], ["a", "b"], ["a", "b"], ["a", "b", "c"]]
    assert held_out == [[], [], [], ["c"], ["d"]]
    # what `mmrec train-seq` did inline before: hold out the last item of users with > 2
    assert histories == [s[:-1] if len(s) > 2 else s for s in users]
    assert [h[0] if h else None for h in held_out] == [s[-1] if len(s) > 2 else None
                                                       for s in users]
    with pytest.raises(ValueError, match="fewer than 3"):
        leave_one_out(users, held_out=1, min_history=2)


def test_leave_one_out_refuses_nonsense_parameters() -> None:
    with pytest.raises(ValueError, match="held_out"):
        leave_one_out([[1, 2, 3]], held_out=0)
    with pytest.raises(ValueError, match="min_history"):
        leave_one_out([[1, 2, 3]], min_history=-1)


def test_metrics_from_hand_computed_ranks() -> None:
    out = metrics_from_ranks(np.array([1, 2, 10, 11, np.inf]), ks=(10, 20))
    np.testing.assert_allclose(out["NDCG@10"], [1, 1 / math.log2(3), 1 / math.log2(11), 0, 0])
    assert out["Recall@10"].tolist() == [1, 1, 1, 0, 0]
    assert out["Recall@20"].tolist() == [1, 1, 1, 1, 0]
    assert out["NDCG@20"][3] == pytest.approx(1 / math.log2(12))


def test_ranks_count_ties_against_the_target_and_keep_a_repeated_target() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 5.0, 3.0, 3.0, 1.0]])
    ranks = target_ranks(scores, [np.array([0]), np.array([1])], np.array([2, 2]))
    assert ranks.tolist() == [3.0, 2.0]  # tied with 1 and 3 / tied with 3 (1 is masked)
    repeat = target_ranks(np.array([[0.0, 9.0, 1.0]]), [np.array([1, 2])], np.array([2]))
    assert repeat.tolist() == [1.0]  # target also in history: not masked
    assert scores[0, 0] == 1.0  # the caller's scores are untouched


def test_a_seen_target_ranks_last_when_masked_with_its_history() -> None:
    scores = np.array([[0.0, 9.0, 1.0, 5.0], [4.0, 3.0, 2.0, 1.0]])
    histories = [np.array([1, 2]), np.array([0])]
    ranks = target_ranks(scores, histories, np.array([2, 1]), mask_seen_target=True)
    assert ranks.tolist() == [4.0, 1.0]  # seen: last of 4 items / unseen: as by default
    assert target_ranks(scores, histories, np.array([2, 1])).tolist() == [2.0, 1.0]


def test_target_ranks_refuses_mismatched_or_non_finite_input() -> None:
    with pytest.raises(ValueError, match="do not match"):
        target_ranks(np.zeros((2, 3)), [np.array([0])], np.array([1]))
    with pytest.raises(ValueError, match="non-finite"):
        target_ranks(np.array([[0.0, np.nan]]), [np.array([0])], np.array([1]))


def test_mean_sums_in_user_order_exactly_as_the_training_loop_did() -> None:
    rng = np.random.default_rng(7)
    zero_based = rng.integers(0, 40, size=1000).tolist()
    ndcg, hits = 0.0, 0  # the inline formula train.py had, on 0-based ranks
    for rank in zero_based:
        if rank < 10:
            ndcg += 1.0 / math.log2(rank + 2)
            hits += 1
    means = mean_metrics(metrics_from_ranks(np.array(zero_based) + 1, ks=(10,)))
    assert means["NDCG@10"] == ndcg / len(zero_based)  # bit for bit, not approx
    assert means["Recall@10"] == hits / len(zero_based)
    assert math.isnan(mean_metrics({"NDCG@10": np.zeros(0)})["NDCG@10"])


def test_rank_ndcg_equals_ir_measures_with_one_relevant_item() -> None:
    n_docs, ks = 60, (1, 5, 10, 50)
    ranks = np.array([*range(1, n_docs + 1), np.inf])  # inf: the item is not in the run
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, run = {}, {}
    for q, rank in enumerate(ranks):
        relevant = docs[int(rank) - 1] if np.isfinite(rank) else "absent"
        qrels[f"q{q}"] = {relevant: 1}
        run[f"q{q}"] = ranking_to_run(docs)
    ours = metrics_from_ranks(ranks, ks)
    theirs = evaluate_qrels_per_query(qrels, run, ks)
    for q in range(len(ranks)):
        for k in ks:
            assert ours[f"NDCG@{k}"][q] == pytest.approx(theirs[f"q{q}"][f"nDCG@{k}"], abs=1e-12)
            assert ours[f"Recall@{k}"][q] == theirs[f"q{q}"][f"R@{k}"]
    mean = evaluate_qrels(qrels, run, ks)
    for name, value in mean_metrics(ours).items():
        ir_name = name.replace("NDCG", "nDCG").replace("Recall", "R")
        assert value == pytest.approx(mean[ir_name], abs=1e-12)


def test_qrels_evaluation_scores_a_missing_run_zero() -> None:
    qrels = {"a": {"x": 2, "y": 1}, "b": {"z": 1}}
    run = {"a": ranking_to_run(["x", "y", "w"])}
    assert evaluate_qrels(qrels, run, (10,)) == {"R@10": 0.5, "nDCG@10": 0.5}
    per_query = evaluate_qrels_per_query(qrels, run, (10,))
    assert per_query == {"a": {"R@10": 1.0, "nDCG@10": 1.0}, "b": {"R@10": 0.0, "nDCG@10": 0.0}}
    assert ranking_to_run(["x", "y"]) == {"x": 2.0, "y": 1.0}
