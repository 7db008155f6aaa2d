"""Encoders: tiny CLIP and text models end to end, offline failures, and the real MiniLM."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import ClipSettings, TextEncoderSettings
from engine.domain import ModelUnavailable
from engine.encoders import (
    ClipEncoder,
    OpenClipEncoder,
    TextEncoder,
    TextEncoderSpec,
    clip_embedding_dim,
    create_clip_encoder,
    create_text_encoder,
    find_text_encoder,
    pool,
    resolve_clip_spec,
    resolve_device,
    resolve_text_encoder_spec,
)
from engine.encoders.text import TransformersTextEncoder, load_text_encoder
from tests.tiny_models import TINY_CLIP_MODEL, make_tiny_clip_settings, make_tiny_text_model

TEXTS = [
    "a red apple",
    "a long description of a wooden chair with four legs and a curved back rest",
    "x",
    "bicycle",
    "the quick brown fox jumps over the lazy dog again and again",
]


def noise_image(seed: int, mode: str = "RGB", size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A deterministic noise image in the given PIL mode."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def assert_unit_rows(rows: np.ndarray, n: int, dim: int) -> None:
    assert rows.shape == (n, dim)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_clip() -> OpenClipEncoder:
    encoder = create_clip_encoder(make_tiny_clip_settings(), "cpu")
    assert isinstance(encoder, OpenClipEncoder)
    return encoder


@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny-text"))


def tiny_text(folder: Path, **spec_changes: object) -> TransformersTextEncoder:
    """The tiny BERT behind a spec with the given changes (pooling, prefixes, padding side)."""
    spec = replace(TextEncoderSpec(name="tiny", source=str(folder)), **spec_changes)
    return load_text_encoder(spec, str(folder), "cpu", max_length=64, batch_size=2)


# --- tiny CLIP -------------------------------------------------------------------------------


def test_tiny_clip_shapes_norms_and_protocol(tiny_clip: OpenClipEncoder) -> None:
    assert isinstance(tiny_clip, ClipEncoder)
    assert tiny_clip.dim == 16
    assert "random weights" in tiny_clip.name and TINY_CLIP_MODEL in tiny_clip.name
    assert_unit_rows(tiny_clip.encode_images([noise_image(i) for i in range(3)]), 3, 16)
    assert_unit_rows(tiny_clip.encode_texts(TEXTS), len(TEXTS), 16)


def test_tiny_clip_empty_input(tiny_clip: OpenClipEncoder) -> None:
    for rows in (tiny_clip.encode_images([]), tiny_clip.encode_texts([])):
        assert rows.shape == (0, 16) and rows.dtype == np.float32


def test_tiny_clip_rejects_a_bare_string(tiny_clip: OpenClipEncoder) -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        tiny_clip.encode_texts("a cat")  # type: ignore[arg-type]


def test_tiny_clip_is_deterministic_across_builds(tiny_clip: OpenClipEncoder) -> None:
    torch.manual_seed(999)  # the caller's RNG state must not matter
    again = create_clip_encoder(make_tiny_clip_settings(), "cpu")
    images = [noise_image(7), noise_image(8)]
    np.testing.assert_array_equal(again.encode_images(images), tiny_clip.encode_images(images))
    np.testing.assert_array_equal(again.encode_texts(TEXTS), tiny_clip.encode_texts(TEXTS))
    assert not np.allclose(tiny_clip.encode_texts(["cat"]), tiny_clip.encode_texts(["dog"]))


def test_tiny_clip_accepts_rgba_l_and_p_images(tiny_clip: OpenClipEncoder) -> None:
    images = [noise_image(1, mode) for mode in ("RGBA", "L", "P", "LA", "RGB")]
    assert_unit_rows(tiny_clip.encode_images(images), len(images), 16)
    grey = noise_image(2, "L")
    np.testing.assert_allclose(
        tiny_clip.encode_images([grey]), tiny_clip.encode_images([grey.convert("RGB")]), atol=1e-6
    )


def test_tiny_clip_flattens_transparency_onto_white(tiny_clip: OpenClipEncoder) -> None:
    transparent = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # "black" but fully transparent
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    black = Image.new("RGB", (40, 40), (0, 0, 0))
    rows = tiny_clip.encode_images([transparent, white, black])
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-6)
    assert not np.allclose(rows[0], rows[2], atol=1e-3)


def test_tiny_clip_batching_matches_one_by_one(tiny_clip: OpenClipEncoder) -> None:
    images = [noise_image(i, size=(30 + i, 50)) for i in range(7)]  # 7 = batches of 4 + 3
    together_images = tiny_clip.encode_images(images)
    together_texts = tiny_clip.encode_texts(TEXTS)
    one_images = np.concatenate([tiny_clip.encode_images([image]) for image in images])
    one_texts = np.concatenate([tiny_clip.encode_texts([text]) for text in TEXTS])
    np.testing.assert_allclose(together_images, one_images, atol=1e-5)
    np.testing.assert_allclose(together_texts, one_texts, atol=1e-5)


def test_tiny_clip_loads_a_local_weights_file(tiny_clip: OpenClipEncoder, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    torch.save(tiny_clip._model.state_dict(), weights)
    settings = ClipSettings(model=TINY_CLIP_MODEL, pretrained=str(weights))
    loaded = create_clip_encoder(settings, "cpu")
    assert str(weights.resolve()) in loaded.name and "random" not in loaded.name
    np.testing.assert_allclose(loaded.encode_texts(TEXTS), tiny_clip.encode_texts(TEXTS), atol=1e-6)


def test_corrupt_weights_file_is_model_unavailable(tmp_path: Path) -> None:
    weights = tmp_path / "broken.safetensors"
    weights.write_bytes(b"not a safetensors file")
    make_tiny_clip_settings()
    with pytest.raises(ModelUnavailable, match=r"broken\.safetensors"):
        create_clip_encoder(ClipSettings(model=TINY_CLIP_MODEL, pretrained=str(weights)), "cpu")


# --- CLIP failures: fast, honest, with the fix -------------------------------------------------


def test_default_vit_b_32_tag_offline_fails_fast_with_the_fix() -> None:
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as caught:
        create_clip_encoder(ClipSettings(), "cpu")
    assert time.perf_counter() - start < 5.0
    message = str(caught.value)
    for needle in ("ViT-B-32", "laion2b_s34b_b79k", "offline", "clip.pretrained",
                   "MMREC_CLIP__PRETRAINED"):
        assert needle in message


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(ModelUnavailable, match="does not exist") as caught:
        create_clip_encoder(ClipSettings(pretrained=str(missing)), "cpu")
    assert str(missing) in str(caught.value)


def test_unknown_arch_says_how_to_list_valid_names() -> None:
    with pytest.raises(ModelUnavailable, match=r"list_models\(\)") as caught:
        create_clip_encoder(ClipSettings(model="ViT-B-33"), "cpu")
    assert "ViT-B-33" in str(caught.value) and "ViT-B-32" in str(caught.value)  # suggestion
    with pytest.raises(ModelUnavailable, match="list_models"):
        clip_embedding_dim("no-such-arch")


def test_no_weights_without_random_weights_is_refused() -> None:
    with pytest.raises(ModelUnavailable, match="no weights configured") as caught:
        create_clip_encoder(ClipSettings(pretrained=None), "cpu")
    assert "clip.pretrained" in str(caught.value)


def test_unknown_tag_lists_known_tags() -> None:
    with pytest.raises(ModelUnavailable, match="laion2b_s34b_b79k"):
        create_clip_encoder(ClipSettings(pretrained="no_such_tag"), "cpu")


def test_arch_with_uncached_hf_tokenizer_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="timm/ViT-B-16-SigLIP"):
        create_clip_encoder(ClipSettings(model="ViT-B-16-SigLIP", random_weights=True), "cpu")
    assert time.perf_counter() - start < 5.0


def test_tag_weights_are_found_in_a_hub_cache(tmp_path: Path) -> None:
    commit = "0" * 40
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    spec = resolve_clip_spec(ClipSettings(), hf_cache_dir=tmp_path)
    assert spec.weights == snapshot / "open_clip_pytorch_model.bin"
    assert spec.name == "open_clip ViT-B-32 laion2b_s34b_b79k" and spec.embed_dim == 512
    assert spec.preprocess["interpolation"] == "bicubic" and not spec.quick_gelu
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")  # preferred, as open_clip
    assert resolve_clip_spec(ClipSettings(), hf_cache_dir=tmp_path).weights == (
        snapshot / "open_clip_model.safetensors"
    )


def test_clip_embedding_dim_offline() -> None:
    assert clip_embedding_dim("ViT-B-32") == 512
    assert clip_embedding_dim("ViT-L-14") == 768
    make_tiny_clip_settings()
    assert clip_embedding_dim(TINY_CLIP_MODEL) == 16


# --- tiny text encoder ------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls", "last_token"])
def test_tiny_text_pooling_shapes_and_norms(tiny_text_dir: Path, pooling: str) -> None:
    encoder = create_text_encoder(
        TextEncoderSettings(model=str(tiny_text_dir), pooling=pooling, batch_size=2), "cpu"
    )
    assert isinstance(encoder, TextEncoder)
    assert encoder.dim == 32 and f"{pooling} pooling" in encoder.name
    assert_unit_rows(encoder.encode_documents(TEXTS), len(TEXTS), 32)
    assert_unit_rows(encoder.encode_queries(TEXTS[:2]), 2, 32)
    assert encoder.encode_documents([]).shape == (0, 32)


@pytest.mark.parametrize("pooling", ["last_token", "cls", "mean"])
def test_left_and_right_padding_give_the_same_vectors(tiny_text_dir: Path, pooling: str) -> None:
    right = tiny_text(tiny_text_dir, pooling=pooling, padding_side="right")
    left = tiny_text(tiny_text_dir, pooling=pooling, padding_side="left")
    np.testing.assert_allclose(
        left.encode_documents(TEXTS), right.encode_documents(TEXTS), atol=1e-5
    )


def test_text_batching_matches_one_by_one(tiny_text_dir: Path) -> None:
    encoder = tiny_text(tiny_text_dir, pooling="last_token")
    together = encoder.encode_documents(TEXTS)
    one = np.concatenate([encoder.encode_documents([text]) for text in TEXTS])
    np.testing.assert_allclose(together, one, atol=1e-5)


def test_tiny_text_model_is_the_same_every_time(tiny_text_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_text_model(tmp_path / "again")
    first = create_text_encoder(TextEncoderSettings(model=str(tiny_text_dir)), "cpu")
    second = create_text_encoder(TextEncoderSettings(model=str(again)), "cpu")
    np.testing.assert_array_equal(first.encode_documents(TEXTS), second.encode_documents(TEXTS))


def test_concurrent_encoding_is_safe(tiny_text_dir: Path, tiny_clip: OpenClipEncoder) -> None:
    text = create_text_encoder(TextEncoderSettings(model=str(tiny_text_dir), batch_size=2), "cpu")
    expected_text, expected_clip = text.encode_queries(TEXTS), tiny_clip.encode_texts(TEXTS)
    with ThreadPoolExecutor(max_workers=4) as pool_:
        texts = list(pool_.map(lambda _: text.encode_queries(TEXTS), range(8)))
        clips = list(pool_.map(lambda _: tiny_clip.encode_texts(TEXTS), range(8)))
    for rows in texts:
        np.testing.assert_allclose(rows, expected_text, atol=1e-6)
    for rows in clips:
        np.testing.assert_allclose(rows, expected_clip, atol=1e-6)


def test_pool_finds_real_tokens_on_either_side() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last_token").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last_token").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, left, "cls").flatten().tolist() == [2.0, 4.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


def test_query_prefix_changes_queries_only(tiny_text_dir: Path) -> None:
    plain = create_text_encoder(TextEncoderSettings(model=str(tiny_text_dir)), "cpu")
    prefixed = create_text_encoder(
        TextEncoderSettings(model=str(tiny_text_dir), query_prefix="query: "), "cpu"
    )
    np.testing.assert_allclose(
        prefixed.encode_documents(TEXTS), plain.encode_documents(TEXTS), atol=1e-6
    )
    np.testing.assert_allclose(
        plain.encode_queries(TEXTS), plain.encode_documents(TEXTS), atol=1e-6
    )
    assert not np.allclose(prefixed.encode_queries(TEXTS), plain.encode_queries(TEXTS), atol=1e-3)


def test_document_prefix_changes_documents(tiny_text_dir: Path) -> None:
    e5_style = tiny_text(tiny_text_dir, query_prefix="query: ", document_prefix="passage: ")
    plain = tiny_text(tiny_text_dir)
    assert not np.allclose(e5_style.encode_documents(TEXTS), plain.encode_documents(TEXTS))


def test_truncation_at_max_length(tiny_text_dir: Path) -> None:
    settings = TextEncoderSettings(model=str(tiny_text_dir), max_length=8)
    encoder = create_text_encoder(settings, "cpu")
    shared = "one two three four five six seven eight nine ten"
    rows = encoder.encode_documents([shared + " apples", shared + " a different ending"])
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-6)


def test_text_spec_resolution_and_overrides(tiny_text_dir: Path) -> None:
    minilm = find_text_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert minilm is not None and minilm.name == "all-MiniLM-L6-v2"
    qwen = resolve_text_encoder_spec(TextEncoderSettings(model="qwen3-embedding-0.6b"))
    assert qwen.pooling == "last_token" and qwen.query_prefix.startswith("Instruct: ")
    custom = resolve_text_encoder_spec(TextEncoderSettings(model="org/some-encoder"))
    assert (custom.source, custom.pooling, custom.query_prefix) == ("org/some-encoder", "mean", "")
    folder = resolve_text_encoder_spec(
        TextEncoderSettings(model=str(tiny_text_dir), pooling="cls", query_prefix="q: ")
    )
    assert (folder.source, folder.pooling, folder.query_prefix) == (
        str(tiny_text_dir), "cls", "q: "
    )


def test_uncached_hub_text_encoder_fails_fast_with_the_fix() -> None:
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as caught:
        create_text_encoder(TextEncoderSettings(model="qwen3-embedding-0.6b"), "cpu")
    assert time.perf_counter() - start < 5.0
    message = str(caught.value)
    assert "Qwen/Qwen3-Embedding-0.6B" in message and "MMREC_TEXT_ENCODER__MODEL" in message


def test_missing_text_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist") as caught:
        create_text_encoder(TextEncoderSettings(model=str(tmp_path / "gone")), "cpu")
    assert str(tmp_path / "gone") in str(caught.value)


# --- the real packaged MiniLM and devices ---------------------------------------------------


@pytest.mark.slow
def test_packaged_minilm_ranks_by_meaning() -> None:
    encoder = create_text_encoder(TextEncoderSettings(), "cpu")
    assert encoder.dim == 384 and "all-MiniLM-L6-v2" in encoder.name
    cat, kitten, market = encoder.encode_documents(
        ["a photo of a cat", "a kitten sleeping", "stock market crash"]
    )
    assert float(cat @ kitten) > float(cat @ market) + 0.1


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("toaster")
