"""The real SmolLM2-135M learns an obvious rule as a listwise re-ranker (skipped without it).

Catalog: items named after a colour and an object; a user's history is three
items of one colour, and the next item is the one candidate of that colour.
After 120 LoRA steps the trained re-ranker must put that item higher than
the untrained model does, on lists it never saw. It trains the real model, which
took over 15 minutes on 2 loaded CPU cores, so it runs only when asked:
``MMREC_LONG_TESTS=1 pytest tests/test_listwise_smollm2.py`` (minutes on a GPU).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from engine.domain import ItemRecord
from engine.rerank.listwise import ListwiseReranker
from engine.rerank.loading import RerankerSpec, load_causal_lm
from engine.rerank.prompt import PromptSettings
from engine.rerank.stage import Blend
from engine.rerank.training import (
    RerankExample,
    TrainSettings,
    blended_ndcg,
    lora_model,
    score_lists,
    train_listwise,
)
from tests.test_rerank import SMOLLM2

COLOURS = ("red", "blue", "green", "yellow", "black", "white")
THINGS = ("car", "hat", "lamp", "chair", "boat", "kite", "shoe", "cup")
RECORDS = {f"{c}-{t}": ItemRecord(id=f"{c}-{t}", title=f"{c} {t}")
           for c in COLOURS for t in THINGS}


def lists(rng: random.Random, count: int) -> list[RerankExample]:
    out = []
    for _ in range(count):
        colour = rng.choice(COLOURS)
        things = rng.sample(THINGS, 4)
        history = tuple(f"{colour}-{t}" for t in things[:3])
        target = f"{colour}-{things[3]}"
        others = [i for i in RECORDS if not i.startswith(colour)]
        candidates = [*rng.sample(others, 3), target]
        rng.shuffle(candidates)
        out.append(RerankExample(history, tuple(candidates), target))
    return out


@pytest.mark.skipif(not SMOLLM2.exists(), reason=f"SmolLM2 not found at {SMOLLM2}: make models")
@pytest.mark.skipif(os.environ.get("MMREC_LONG_TESTS") != "1",
                    reason="trains the real SmolLM2 (over 15 min on 2 CPU cores): set "
                    "MMREC_LONG_TESTS=1")
@pytest.mark.timeout(3600)
def test_trained_smollm2_beats_the_untrained_one_on_an_obvious_rule(tmp_path: Path) -> None:
    rng = random.Random(7)
    train, valid, test = lists(rng, 120), lists(rng, 12), lists(rng, 40)
    base, tokenizer, _ = load_causal_lm(RerankerSpec(model=str(SMOLLM2),
                                                     cache_dir=tmp_path / "smollm2"))
    prompt = PromptSettings(max_history=3)
    untrained = blended_ndcg(test, score_lists(ListwiseReranker(base, tokenizer, prompt=prompt),
                                               RECORDS, test), Blend(1.0))
    settings = TrainSettings(max_examples=120, eval_every=60, learning_rate=1e-3, seed=7)
    reranker = ListwiseReranker(lora_model(base, settings), tokenizer, prompt=prompt)
    train_listwise(reranker, RECORDS, train, valid, settings)
    trained = blended_ndcg(test, score_lists(reranker, RECORDS, test), Blend(1.0))
    assert trained > untrained + 0.1, (untrained, trained)
