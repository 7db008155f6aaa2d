"""int8 serving weights for the listwise re-ranker, and the agreement measure used to judge them.

A tiny random Llama (real transformers class, real tokenizer) is quantised with
PyTorch's dynamic quantisation; the scorer must still run its one-pass path
with a cached prefix, and its scores must stay close to the float model's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.domain import ItemRecord
from engine.rerank.listwise import ListwiseReranker
from engine.rerank.quantise import int8_linear, is_int8, ranking_agreement
from engine.rerank.stage import RerankQuery
from tests.tiny_llm import make_tiny_llm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("quantise") / "tiny")


def film(i: int) -> ItemRecord:
    return ItemRecord(id=f"f{i}", title=f"Film number {i}", attributes={"year": 1990 + i})


def test_int8_model_scores_through_the_cached_prefix_close_to_float(tiny: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    quantised = int8_linear(model)
    assert is_int8(quantised) and not is_int8(model)  # a copy: the float model is untouched
    query, candidates = RerankQuery(history=[film(i) for i in range(5)]), [
        film(100 + i) for i in range(8)]
    fp32 = ListwiseReranker(model, tokenizer).score(query, candidates).scores
    int8 = ListwiseReranker(quantised, tokenizer)
    cold, warm = int8.score(query, candidates), int8.score(query, candidates)
    assert cold.scored == warm.scored == 8
    assert cold.scores == pytest.approx(warm.scores, abs=1e-5)  # cached prefix == full pass
    assert warm.scores == pytest.approx(fp32, rel=0.05)  # measured: 2 % at most
    assert int8.raw_forward_seconds(query, candidates) > 0


def test_int8_refuses_a_model_off_the_cpu(tiny: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny).to("meta")
    with pytest.raises(ValueError, match="for the CPU"):
        int8_linear(model)


def test_ranking_agreement_of_identical_reversed_and_swapped_lists() -> None:
    same = ranking_agreement([[3.0, 2.0, 1.0, 0.0]], [[30.0, 20.0, 10.0, 0.0]])
    assert same == {"top1_agreement": 1.0, "kendall_tau": 1.0, "top10_overlap": 1.0,
                    "lists": 1.0}
    reversed_ = ranking_agreement([[3.0, 2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0, 3.0]])
    assert reversed_["top1_agreement"] == 0.0 and reversed_["kendall_tau"] == pytest.approx(-1)
    swapped = ranking_agreement([[3.0, 2.0, 1.0, 0.0], [1.0, 0.0]], [[2.0, 3.0, 1.0, 0.0],
                                                                      [1.0, 0.0]])
    assert swapped["top1_agreement"] == 0.5
    assert swapped["kendall_tau"] == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="same"):
        ranking_agreement([[1.0]], [])
