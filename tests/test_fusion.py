"""The fused vector: its math, missing parts, and a golden output of the real encoders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.domain import ItemInput, ItemRecord
from engine.encoders.fusion import VectorFuser, l2_normalise, mix_clip
from engine.runtime.engine import Engine

GOLDEN = Path(__file__).parent / "golden" / "fused_tiny.npy"


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_fused_cosine_is_weighted_sum_of_channel_cosines() -> None:
    rng = np.random.default_rng(0)
    fuser = VectorFuser({"clip": 8, "text": 5}, {"clip": 3.0, "text": 1.0})
    a = {k: rng.normal(size=d) for k, d in fuser.dims.items()}
    b = {k: rng.normal(size=d) for k, d in fuser.dims.items()}
    cos = {k: float(unit(a[k]) @ unit(b[k])) for k in a}
    expected = (3.0 * cos["clip"] + 1.0 * cos["text"]) / 4.0
    assert float(fuser.fuse(a) @ fuser.fuse(b)) == pytest.approx(expected, abs=1e-6)
    assert np.linalg.norm(fuser.fuse(a)) == pytest.approx(1.0, abs=1e-6)


def test_missing_part_is_a_zero_block_and_scales_the_rest() -> None:
    fuser = VectorFuser({"clip": 3, "text": 2}, {"clip": 1.0, "text": 1.0})
    text_only = fuser.fuse({"text": np.array([3.0, 4.0])})
    assert np.allclose(text_only, [0, 0, 0, 0.6, 0.8])
    full = fuser.fuse({"clip": np.array([1.0, 0, 0]), "text": np.array([3.0, 4.0])})
    # Same text, no clip on one side: cosine = w_text * 1 / sqrt(w_text) / sqrt(w_clip + w_text)
    assert float(text_only @ full) == pytest.approx(1 / np.sqrt(2), abs=1e-6)


def test_batch_rows_match_single_rows_and_zero_rows_stay_zero() -> None:
    fuser = VectorFuser({"a": 2, "b": 2}, {"a": 2.0, "b": 0.5})
    rows = {"a": np.array([[1.0, 2.0], [0.0, 0.0]]), "b": np.array([[0.0, 1.0], [0.0, 0.0]])}
    batch = fuser.fuse(rows)
    assert np.allclose(batch[0], fuser.fuse({"a": rows["a"][0], "b": rows["b"][0]}))
    assert not batch[1].any()


def test_weight_zero_channel_contributes_nothing() -> None:
    fuser = VectorFuser({"a": 2, "b": 2}, {"a": 1.0, "b": 0.0})
    x = fuser.fuse({"a": np.array([1.0, 0]), "b": np.array([0.0, 1])})
    assert np.allclose(x, [1, 0, 0, 0])


def test_fuser_rejects_wrong_sizes_and_unknown_channels() -> None:
    fuser = VectorFuser({"a": 2}, {"a": 1.0})
    with pytest.raises(ValueError, match="size 3"):
        fuser.fuse({"a": np.ones(3)})
    with pytest.raises(ValueError, match="unknown"):
        fuser.fuse({"z": np.ones(2)})
    with pytest.raises(ValueError, match="unknown"):
        VectorFuser({"a": 2}, {"b": 1.0})


def test_mix_clip() -> None:
    img = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    txt = np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 0.0]])
    mixed = mix_clip(img, txt, image_weight=0.75)
    assert np.allclose(mixed[0], l2_normalise(np.array([0.75, 0.25])))
    assert np.allclose(mixed[1], [0, 1])  # text only
    assert np.allclose(mixed[2], [1, 0])  # image only
    assert np.allclose(mix_clip(None, txt[:1], 0.5), [[0, 1]])


def golden_items() -> list[ItemInput]:
    gradient = np.linspace(0, 255, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
    image = Image.fromarray(gradient.astype(np.uint8), "RGB")
    return [
        ItemInput(ItemRecord(id="t", title="Red apple", text="Fresh from the orchard.")),
        ItemInput(ItemRecord(id="i"), image=image),
        ItemInput(ItemRecord(id="b", title="Red apple"), image=image),
    ]


def test_fused_vector_golden(engine: Engine) -> None:
    """Pins the whole encode path (tokenisers, towers, pooling, mixing, fusion) on tiny models.

    Regenerate deliberately with MMREC_UPDATE_GOLDEN=1 when an intended change moves it.
    """
    stored = engine.encode_items(golden_items())
    fused = np.stack([s.vectors["fused"] for s in stored])
    assert [sorted(s.vectors) for s in stored] == [
        ["clip", "fused", "lexical", "text"], ["clip", "fused"],
        ["clip", "fused", "lexical", "text"]]
    assert np.allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    if os.environ.get("MMREC_UPDATE_GOLDEN") == "1":
        np.save(GOLDEN, fused)
    golden = np.load(GOLDEN)
    assert fused.shape == golden.shape
    np.testing.assert_allclose(fused, golden, atol=2e-5)
