"""The co-occurrence channel: SVD embeddings reproduce item-kNN, and the engine serves them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.behaviour.cooccurrence import CooccurrenceModel, mips_items, mips_queries
from engine.domain import InvalidInput, ModelUnavailable

USERS = [["a", "b", "c"], ["a", "b"], ["b", "c", "d"], ["d", "e"], ["a", "e", "c"], ["e", "d"]]


def knn_scores(histories: list[list[str]], items: list[str], decay: float) -> np.ndarray:
    """Recency-weighted item-kNN with exact cosines of the binary item columns (by hand)."""
    matrix = np.array([[1.0 if i in set(u) else 0.0 for i in items] for u in USERS])
    unit = matrix / np.linalg.norm(matrix, axis=0)
    cosine = unit.T @ unit
    out = np.zeros((len(histories), len(items)))
    for row, history in enumerate(histories):
        for age, item in enumerate(reversed(history)):
            out[row] += decay ** age * cosine[items.index(item)]
    return out


def test_full_rank_embeddings_reproduce_item_knn_order() -> None:
    model = CooccurrenceModel.fit(USERS, dim=8, decay=0.5)
    assert model.item_ids == ["a", "b", "c", "d", "e"] and model.vector_dim == 9
    histories = [["a"], ["c", "d"], ["e", "a", "b"]]
    expected = knn_scores(histories, model.item_ids, 0.5)
    _, items = model.item_vectors()
    got = model.encode(histories) @ items.T        # what Qdrant's cosine search ranks by
    raw = model.queries(histories) @ model.embeddings.T
    np.testing.assert_allclose(raw, expected, atol=1e-5)   # rank 4 of 5 items: exact here
    for row in range(len(histories)):   # the cosine order sorts the kNN scores (ties aside)
        in_cosine_order = expected[row][np.argsort(-got[row])]
        assert np.all(np.diff(in_cosine_order) <= 1e-5)


def test_mips_transform_keeps_the_dot_product_order() -> None:
    rng = np.random.default_rng(0)
    table, queries = rng.normal(size=(50, 6)), rng.normal(size=(7, 6))
    items = mips_items(table)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    cosine = mips_queries(queries) @ items.T
    for row in range(len(queries)):
        assert list(np.argsort(-cosine[row])) == list(np.argsort(-(queries[row] @ table.T)))


def test_unknown_items_are_skipped_and_empty_histories_give_zero() -> None:
    model = CooccurrenceModel.fit(USERS, dim=3)
    vectors = model.encode([["zzz"], [], ["zzz", "a"]])
    assert not vectors[0].any() and not vectors[1].any()
    np.testing.assert_allclose(vectors[2], model.encode([["a"]])[0])


def test_save_load_round_trip_and_bad_folders(tmp_path: Path) -> None:
    model = CooccurrenceModel.fit(USERS, dim=4, decay=0.7)
    model.save(tmp_path / "m")
    back = CooccurrenceModel.load(tmp_path / "m")
    np.testing.assert_array_equal(back.embeddings, model.embeddings)
    assert (back.item_ids, back.decay) == (model.item_ids, 0.7)
    with pytest.raises(ModelUnavailable, match="mmrec train-seq"):
        CooccurrenceModel.load(tmp_path / "missing")
    (tmp_path / "m" / "cooccurrence.json").write_text("{not json")
    with pytest.raises(ModelUnavailable):
        CooccurrenceModel.load(tmp_path / "m")


def test_fit_refuses_too_little_data_and_bad_decay() -> None:
    with pytest.raises(InvalidInput, match="two users and two items"):
        CooccurrenceModel.fit([["a", "b"]])
    with pytest.raises(InvalidInput, match="decay"):
        CooccurrenceModel.fit(USERS, decay=0.0)
