"""The behavioural channel's sequential model: learning, vectors, persistence, determinism."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.behaviour.sequential import (
    SequentialModel,
    SequentialSettings,
    evaluate_next_item,
    train_sequential,
)
from engine.behaviour.sequential.artifact import (
    META_FILE,
    WEIGHTS_FILE,
    TrainingFacts,
    build_network,
)
from engine.behaviour.sequential.model import PAD, SasRec
from engine.behaviour.sequential.train import validation_split
from engine.domain import InvalidInput, ModelUnavailable

N_ITEMS = 12
TINY = SequentialSettings(dim=16, layers=1, heads=2, max_len=8, dropout=0.0, attention_dropout=0.0,
                          lr=0.01, batch_size=16, epochs=40, patience=40, seed=3, threads=1)


def cycle_sequences(n_users: int = 24, length: int = 8) -> list[list[str]]:
    """Item i is always followed by i + 1 (mod N_ITEMS); users start at different items."""
    return [[f"i{(start + step) % N_ITEMS}" for step in range(length)]
            for start in (u % N_ITEMS for u in range(n_users))]


@pytest.fixture(scope="module")
def trained() -> SequentialModel:
    """A tiny model trained on the cycle pattern, shared by the read-only tests."""
    return train_sequential(cycle_sequences(), TINY, progress=False)


def random_model(n_items: int = 30, seed: int = 0, **overrides: object) -> SequentialModel:
    """An untrained model with random (not tiny) embeddings, for vector algebra tests."""
    settings = SequentialSettings(**{**TINY.to_dict(), **overrides})
    torch.manual_seed(seed)
    network = build_network(n_items, settings)
    with torch.no_grad():
        network.item_embedding.weight[1:].normal_(0, 1).mul_(torch.rand(n_items, 1) * 2)
    return SequentialModel(network, [f"m{i}" for i in range(n_items)], settings)


def test_learns_the_next_item(trained: SequentialModel) -> None:
    histories = [[f"i{(s + k) % N_ITEMS}" for k in range(3)] for s in range(N_ITEMS)]
    top = trained.scores(histories).argmax(axis=1)
    expected = [trained.item_ids.index(f"i{(s + 3) % N_ITEMS}") for s in range(N_ITEMS)]
    assert top.tolist() == expected


def test_vectors_are_unit_and_one_longer(trained: SequentialModel) -> None:
    ids, vectors = trained.item_vectors()
    assert ids == trained.item_ids
    assert vectors.dtype == np.float32 and vectors.shape == (N_ITEMS, TINY.dim + 1)
    assert trained.vector_dim == TINY.dim + 1
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    query = trained.encode([["i1", "i2"]])
    assert query.shape == (1, TINY.dim + 1) and query[0, -1] == 0.0
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, atol=1e-5)


def test_cosine_order_equals_dot_product_order() -> None:
    model = random_model()
    rng = np.random.default_rng(1)
    histories = [list(rng.choice(model.item_ids, size=rng.integers(1, 12)))
                 for _ in range(20)]
    _, items = model.item_vectors()
    cosine = model.encode(histories).astype(np.float64) @ items.astype(np.float64).T
    dot = model.scores(histories)
    for c, d in zip(cosine, dot, strict=True):
        assert np.argsort(-c, kind="stable").tolist() == np.argsort(-d, kind="stable").tolist()
    # cosine = dot / (|h| M): the same scores up to one positive factor per query
    top = np.linalg.norm(model.network.item_table().detach().numpy(), axis=1).max()
    scale = np.linalg.norm(model.hidden(histories), axis=1, keepdims=True) * top
    np.testing.assert_allclose(cosine, dot / scale, atol=1e-6)


def test_unknown_ids_are_skipped(trained: SequentialModel) -> None:
    plain = trained.encode([["i4", "i5"]])
    mixed = trained.encode([["new-a", "i4", "new-b", "i5", "new-c"]])
    np.testing.assert_array_equal(plain, mixed)


def test_empty_or_unknown_history_gives_zero_row(trained: SequentialModel) -> None:
    rows = trained.encode([[], ["never-seen"], ["i1"]])
    assert not rows[0].any() and not rows[1].any() and rows[2].any()
    assert not trained.scores([[]]).any()


def test_only_the_latest_max_len_events_count(trained: SequentialModel) -> None:
    tail = [f"i{k % N_ITEMS}" for k in range(TINY.max_len)]
    longer = ["i7", "i3", "i9", *tail]
    np.testing.assert_array_equal(trained.encode([tail]), trained.encode([longer]))


def test_batch_encoding_matches_single(trained: SequentialModel) -> None:
    histories = [["i1"], ["i2", "i3", "i4", "i5"], ["i9", "i10"]]
    batch = trained.encode(histories)
    single = np.concatenate([trained.encode([h]) for h in histories])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_save_load_round_trip(trained: SequentialModel, tmp_path: Path) -> None:
    trained.save(tmp_path / "seq")
    loaded = SequentialModel.load(tmp_path / "seq")
    histories = [["i1", "i2"], ["i5"], ["i3", "unknown"]]
    np.testing.assert_array_equal(loaded.encode(histories), trained.encode(histories))
    np.testing.assert_array_equal(loaded.item_vectors()[1], trained.item_vectors()[1])
    assert loaded.item_ids == trained.item_ids
    assert loaded.settings == trained.settings
    assert loaded.facts == trained.facts and loaded.facts.n_sequences == 24


def test_same_seed_same_weights() -> None:
    settings = SequentialSettings(
        **{**TINY.to_dict(), "epochs": 3, "dropout": 0.3, "attention_dropout": 0.2})
    a = train_sequential(cycle_sequences(), settings, progress=False)
    b = train_sequential(cycle_sequences(), settings, progress=False)
    for (name, x), y in zip(a.network.state_dict().items(), b.network.state_dict().values(),
                            strict=True):
        assert torch.equal(x, y), name


def test_early_stopping_keeps_the_best_epoch() -> None:
    sequences = cycle_sequences()
    # Targets that contradict the pattern: validation gets worse as training learns it.
    targets: list[str | None] = [seq[-2] if u % 2 else None for u, seq in enumerate(sequences)]
    settings = SequentialSettings(**{**TINY.to_dict(), "epochs": 30, "patience": 3})
    model = train_sequential(sequences, settings, valid_targets=targets, progress=False)
    facts = model.facts
    assert facts.epochs_run == facts.best_epoch + settings.patience < settings.epochs
    assert facts.best_valid_ndcg is not None
    # The kept weights are the best epoch's: evaluating them again gives its score.
    rerun = SequentialSettings(**{**settings.to_dict(), "epochs": facts.best_epoch})
    again = train_sequential(sequences, rerun, valid_targets=targets, progress=False)
    for x, y in zip(model.network.state_dict().values(), again.network.state_dict().values(),
                    strict=True):
        assert torch.equal(x, y)


def test_refit_trains_on_the_held_out_items_for_the_best_epoch_count() -> None:
    sequences = cycle_sequences()
    histories = [seq[:-1] for seq in sequences]
    targets: list[str | None] = [seq[-1] if u % 3 else None for u, seq in enumerate(sequences)]
    settings = SequentialSettings(**{**TINY.to_dict(), "epochs": 12, "patience": 12})
    searched = train_sequential(histories, settings, valid_targets=targets, progress=False)
    refit = train_sequential(histories, settings, valid_targets=targets, refit=True,
                             progress=False)
    facts = refit.facts
    assert facts.refit_epochs == facts.best_epoch == searched.facts.best_epoch
    assert facts.best_valid_ndcg == searched.facts.best_valid_ndcg
    assert searched.facts.refit_epochs == 0
    # The served weights are those of a plain run on the histories with their targets.
    full = [[*h, t] if t is not None else h for h, t in zip(histories, targets, strict=True)]
    plain = train_sequential(full, SequentialSettings(**{**settings.to_dict(),
                                                         "epochs": facts.best_epoch}),
                             progress=False)
    for (name, x), y in zip(refit.network.state_dict().items(),
                            plain.network.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert not torch.equal(refit.network.item_embedding.weight,
                           searched.network.item_embedding.weight)


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidInput):
        train_sequential([["a", "b"]], TINY, valid_targets=[], progress=False)
    with pytest.raises(InvalidInput):
        train_sequential([["a"], []], TINY, progress=False)
    with pytest.raises(InvalidInput):
        SequentialSettings(dim=10, heads=3)


def test_load_refuses_bad_folders(trained: SequentialModel, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        SequentialModel.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match=r"no model\.json"):
        SequentialModel.load(tmp_path / "empty")
    folder = tmp_path / "seq"
    trained.save(folder)
    (folder / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelUnavailable, match="unreadable"):
        SequentialModel.load(folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelUnavailable, match=re.escape(f"no {WEIGHTS_FILE}")):
        SequentialModel.load(folder)
    trained.save(folder)
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelUnavailable, match="format version"):
        SequentialModel.load(folder)
    (folder / META_FILE).write_text("{broken")
    with pytest.raises(ModelUnavailable, match="corrupt"):
        SequentialModel.load(folder)


def test_facts_default_to_the_vocabulary() -> None:
    assert random_model(n_items=5).facts == TrainingFacts(n_items=5)


def inline_ndcg_before_engine_evaluation(network: SasRec, histories: Sequence[np.ndarray],
                                         targets: np.ndarray, *, max_len: int, k: int = 10
                                         ) -> tuple[float, float]:
    """``evaluate_next_item`` as train.py had it, with its own masking, ranks and NDCG."""
    network.eval()
    ndcg, hits = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(targets), 256):
            chunk = [h[-max_len:] for h in histories[start:start + 256]]
            width = max((len(h) for h in chunk), default=0) or 1
            items = np.full((len(chunk), width), PAD, dtype=np.int64)
            for row, h in enumerate(chunk):
                if len(h):
                    items[row, width - len(h):] = h
            batch = torch.from_numpy(items)
            scores = network.logits(network.last_hidden(batch))
            scores = scores * (batch[:, -1:] != PAD)
            for row, h in enumerate(histories[start:start + 256]):
                scores[row, torch.as_tensor(h, dtype=torch.long) - 1] = -math.inf
            target = torch.as_tensor(targets[start:start + 256]) - 1
            target_score = scores.gather(1, target[:, None])
            ranks = (scores >= target_score).sum(1) - 1
            for rank in ranks.tolist():
                if rank < k:
                    ndcg += 1.0 / math.log2(rank + 2)
                    hits += 1
    return ndcg / len(targets), hits / len(targets)


def test_validation_ndcg_is_unchanged_by_engine_evaluation() -> None:
    n_items = 30
    model = random_model(n_items=n_items, seed=4)
    rng = np.random.default_rng(5)
    histories = [rng.integers(1, n_items + 1, size=rng.integers(0, 20)).astype(np.int64)
                 for _ in range(300)]  # > one batch; empty ones; longer than max_len
    targets = rng.integers(1, n_items + 1, size=len(histories)).astype(np.int64)
    targets[:40] = [h[-1] if len(h) else 1 for h in histories[:40]]  # seen targets
    for k in (1, 10, 30):
        new = evaluate_next_item(model.network, histories, targets, max_len=TINY.max_len, k=k)
        old = inline_ndcg_before_engine_evaluation(model.network, histories, targets,
                                                   max_len=TINY.max_len, k=k)
        assert new == old  # bit for bit: early stopping decides exactly as before
    assert 0 < new[0] < 1


def test_validation_split_holds_out_the_last_item_of_users_with_three_or_more() -> None:
    users = [["a"], ["a", "b"], ["a", "b", "c"], ["c", "b", "a", "d"]]
    histories, targets = validation_split(users)
    assert histories == [["a"], ["a", "b"], ["a", "b"], ["c", "b", "a"]]
    assert targets == [None, None, "c", "d"]
