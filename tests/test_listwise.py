"""The listwise re-ranker: prompt, one-pass verbaliser, budget, blend guard, training, artefact.

Every test runs a real (tiny, seeded, randomly initialised) causal LM of the real
transformers class with a real tokenizer, so each line of the serving and
training paths runs; the real SmolLM2 test is in tests/test_listwise_smollm2.py.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.domain import ItemRecord, ModelUnavailable
from engine.rerank.artifact import (
    Provenance,
    RerankArtifact,
    check_provenance,
    folder_fingerprint,
    model_fingerprint,
)
from engine.rerank.listwise import ListwiseReranker
from engine.rerank.prompt import LABELS, PromptBuilder, PromptSettings, render_item
from engine.rerank.stage import Blend, RerankQuery, merge_order
from engine.rerank.training import (
    RerankExample,
    TrainSettings,
    blended_ndcg,
    calibrate,
    choose_blend,
    clear_gain,
    lora_model,
    position_prior,
    score_lists,
    train_listwise,
    training_list,
)
from tests.tiny_llm import make_tiny_llm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("listwise") / "tiny")


def load(folder: Path) -> tuple[Any, Any]:
    return (AutoModelForCausalLM.from_pretrained(folder).eval(),
            AutoTokenizer.from_pretrained(folder))


def film(i: int, genre: str = "drama") -> ItemRecord:
    return ItemRecord(id=f"f{i}", title=f"Film number {i}",
                      attributes={"year": 1990 + i % 30, "genres": [genre, "war"]})


HISTORY = [film(i) for i in range(12)]
CANDIDATES = [film(100 + i, "comedy") for i in range(8)]


def test_labels_are_single_distinct_tokens_in_candidate_order(tiny: Path) -> None:
    _, tokenizer = load(tiny)
    builder = PromptBuilder(tokenizer)
    prompt = builder.build(CANDIDATES, history=HISTORY)
    assert prompt.label_ids == builder.label_ids[:len(CANDIDATES)]
    assert len(set(builder.label_ids)) == len(LABELS)
    text = tokenizer.decode(prompt.candidates)
    assert [text.index(f"{label.lower()}. film number {100 + i}")
            for i, label in enumerate(LABELS[:8])] == sorted(
        text.index(f"{label.lower()}. film number {100 + i}") for i, label in enumerate(LABELS[:8]))


def test_history_keeps_the_newest_in_time_order_within_budgets(tiny: Path) -> None:
    _, tokenizer = load(tiny)
    settings = PromptSettings(max_history=3, max_item_tokens=4, max_candidate_tokens=3)
    builder = PromptBuilder(tokenizer, settings)
    prefix = tokenizer.decode(builder.prefix(history=HISTORY))
    shown = [i for i in range(12) if f"film number {i} " in prefix + " "]
    assert shown == [9, 10, 11]  # the newest three, oldest first
    assert "1999" not in prefix  # cut at 4 tokens: "film number 9 (" and no year
    lines = builder.candidate_lines(CANDIDATES)
    label_and_newline = len(builder._encode("A. ")) + len(builder._encode("\n"))
    assert all(len(line) == label_and_newline + 3 for line in lines)


def test_render_item_shows_title_year_and_genres() -> None:
    assert render_item(film(5)) == "Film number 5 (1995; drama, war)"
    assert render_item(film(5), genres=False) == "Film number 5 (1995)"
    assert render_item(ItemRecord(id="x", title="Drill", text="XK-4417 cordless")) == (
        "Drill (XK-4417 cordless)")


def test_more_candidates_than_labels_is_refused(tiny: Path) -> None:
    _, tokenizer = load(tiny)
    with pytest.raises(ValueError, match="at most 26"):
        PromptBuilder(tokenizer).candidate_lines([film(i) for i in range(27)])


def separate_label_logprobs(model: torch.nn.Module, ids: list[int], labels: list[int]
                            ) -> list[float]:
    """log P(label | whole prompt) for each label from its own full, uncached forward."""
    out = []
    for label in labels:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        out.append(float(logits.float().log_softmax(-1)[label]))
    return out


def test_one_pass_with_cached_prefix_equals_separate_label_logprobs(tiny: Path) -> None:
    model, tokenizer = load(tiny)
    reranker = ListwiseReranker(model, tokenizer)
    query = RerankQuery(history=HISTORY)
    first = reranker.score(query, CANDIDATES)
    again = reranker.score(query, CANDIDATES)  # the prefix now comes from the LRU
    prompt = reranker.prompts.build(CANDIDATES, history=HISTORY)
    expected = separate_label_logprobs(model, prompt.ids, prompt.label_ids)
    assert first.scored == again.scored == len(CANDIDATES)
    assert first.scores == pytest.approx(expected, abs=1e-4)
    assert again.scores == pytest.approx(expected, abs=1e-4)
    assert len(set(expected)) == len(expected)  # distinct: the comparison means something


def test_search_query_prompt_scores_in_one_pass(tiny: Path) -> None:
    model, tokenizer = load(tiny)
    reranker = ListwiseReranker(model, tokenizer)
    result = reranker.score(RerankQuery(text="a war film"), CANDIDATES)
    prompt = reranker.prompts.build(CANDIDATES, query="a war film")
    assert "search" in tokenizer.decode(prompt.prefix)
    assert result.scores == pytest.approx(
        separate_label_logprobs(model, prompt.ids, prompt.label_ids), abs=1e-4)


def test_a_passed_deadline_scores_nothing(tiny: Path) -> None:
    model, tokenizer = load(tiny)
    result = ListwiseReranker(model, tokenizer).score(
        RerankQuery(history=HISTORY), CANDIDATES, deadline=time.monotonic() - 1)
    assert result.scored == 0 and result.scores == [None] * len(CANDIDATES)


def test_a_tight_deadline_scores_a_prefix_that_fits(tiny: Path) -> None:
    model, tokenizer = load(tiny)
    reranker = ListwiseReranker(model, tokenizer, prefix_cache_size=0)
    query = RerankQuery(history=HISTORY)
    reranker.score(query, CANDIDATES)  # learns the pace
    pace = 0.02  # a known pace, slow enough that tokenising costs little of the budget
    reranker._seconds_per_position = pace
    prefix = len(reranker.prompts.prefix(history=HISTORY))
    lines = reranker.prompts.candidate_lines(CANDIDATES)
    fixed = prefix + len(reranker.prompts.candidates_header()) + len(reranker.prompts.tail())
    budget = (fixed + sum(map(len, lines[:4])) + len(lines[4]) / 2) * pace  # room for 4.5
    result = reranker.score(query, CANDIDATES, deadline=time.monotonic() + budget)
    assert result.scored == 4
    assert all(s is not None for s in result.scores[:4])
    assert result.scores[4:] == [None] * 4


@pytest.mark.parametrize("seed", range(5))
def test_blend_weight_zero_keeps_the_first_stage_order_exactly(seed: int) -> None:
    rng = random.Random(seed)
    scores: list[float | None] = [rng.random() for _ in range(20)] + [None] * 5
    assert merge_order(scores, Blend(0.0)) == list(range(25))
    llm_order = sorted(range(20), key=lambda i: -(scores[i] or 0.0))
    assert merge_order(scores, Blend(1.0)) == llm_order + list(range(20, 25))


def test_blend_in_between_mixes_both_ranks() -> None:
    scores: list[float | None] = [0.0, 1.0, 2.0, 3.0]  # the LLM reverses the list
    assert merge_order(scores, Blend(0.5, k=1)) == [0, 3, 1, 2]  # ties keep fused order


def genre_examples(rng: random.Random, count: int) -> list[RerankExample]:
    """The obvious rule: the next item shares the genre of the whole history."""
    out = []
    for _ in range(count):
        genre = rng.randrange(4)
        history = tuple(f"g{genre}-{n}" for n in rng.sample(range(6), 3))
        target = f"g{genre}-{rng.choice([n for n in range(6) if f'g{genre}-{n}' not in history])}"
        others = [f"g{g}-{n}" for g in range(4) if g != genre for n in range(6)]
        candidates = [*rng.sample(others, 3), target]
        rng.shuffle(candidates)
        out.append(RerankExample(history, tuple(candidates), target))
    return out


GENRES = ("comedy", "drama", "war", "horror")
GENRE_RECORDS = {f"g{g}-{n}": ItemRecord(id=f"g{g}-{n}", title=f"{GENRES[g]} {n}",
                                         attributes={"genres": [GENRES[g]]})
                 for g in range(4) for n in range(6)}


def blend_lists(right: int, wrong: int) -> tuple[list[RerankExample], list[list[float]]]:
    """``right`` lists where the first stage ranks the target 5th and the LLM puts it first,
    then ``wrong`` lists where the first stage ranks it first and the LLM puts it last."""
    out, scores = [], []
    for n in range(right + wrong):
        candidates = tuple(f"c{n}-{i}" for i in range(10))
        row = [float(-i) for i in range(10)]
        slot = 4 if n < right else 0
        row[slot] = 1.0 if n < right else -99.0
        out.append(RerankExample(("h",), candidates, candidates[slot]))
        scores.append(row)
    return out, scores


def test_choose_blend_takes_a_weight_that_clearly_beats_the_first_stage() -> None:
    examples, scores = blend_lists(36, 4)
    blend, trials = choose_blend(examples, scores)
    assert blend.weight > 0 and trials[blend.weight] > trials[0.0]


def test_choose_blend_keeps_the_first_stage_when_the_gain_is_within_noise() -> None:
    examples, scores = blend_lists(11, 9)  # a small mean gain, a large spread
    blend, trials = choose_blend(examples, scores)
    assert max(trials.values()) > trials[0.0]
    assert blend.weight == 0.0


def test_clear_gain_is_a_two_standard_error_rule() -> None:
    assert clear_gain([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert not clear_gain([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0])  # mean 0.25, SE 0.48
    assert not clear_gain([1.0], [0.0])  # one list: no error estimate


def test_the_slot_prior_removes_a_pull_towards_the_first_slot() -> None:
    # The LLM adds +2 to whatever sits first; underneath it prefers the item "t" (+1).
    rows = [[3.0, 1.0, 0.0], [2.0, 0.0, 1.0], [2.0, 1.0, 0.0]]  # "t" at slot 0, 2, 1
    prior = position_prior([*rows, []])  # unscored lists do not count
    assert prior == pytest.approx([7 / 3, 2 / 3, 1 / 3])
    fixed = calibrate(rows, prior)
    assert [row.index(max(row)) for row in fixed] == [0, 2, 1]  # "t" wins in every list
    assert calibrate([[1.0, 2.0, 3.0, 4.0]], [1.0, 1.0]) == [[0.0, 1.0, 3.0, 4.0]]


def test_lists_without_their_target_are_not_scored_and_count_zero(tiny: Path) -> None:
    base, tokenizer = load(tiny)
    reranker = ListwiseReranker(base, tokenizer)
    rng = random.Random(3)
    examples = genre_examples(rng, 6)
    missing = [RerankExample(e.history, e.candidates, "g0-0") for e in examples[:3]
               if "g0-0" not in e.candidates]
    lists = [*examples, *missing]
    scores = score_lists(reranker, GENRE_RECORDS, lists, skip_missing=True)
    assert [len(row) for row in scores[len(examples):]] == [0] * len(missing)
    full = score_lists(reranker, GENRE_RECORDS, lists)
    assert blended_ndcg(lists, scores, Blend(1.0)) == blended_ndcg(lists, full, Blend(1.0))


def test_training_list_puts_a_missed_target_in_and_shuffles() -> None:
    rng = random.Random(0)
    example = RerankExample(("a",), ("b", "c", "d"), "t")
    lists = [training_list(example, rng) for _ in range(20)]
    assert all(cands[index] == "t" and len(cands) == 3 for cands, index in lists)
    assert len({index for _, index in lists}) > 1


def test_training_lowers_the_loss_and_the_artefact_reloads(tiny: Path, tmp_path: Path) -> None:
    rng = random.Random(1)
    train, valid = genre_examples(rng, 100), genre_examples(rng, 16)
    settings = TrainSettings(max_examples=100, eval_every=50, learning_rate=3e-3, seed=1)
    base, tokenizer = load(tiny)
    model = lora_model(base, settings)
    reranker = ListwiseReranker(model, tokenizer)
    log = train_listwise(reranker, GENRE_RECORDS, train, valid, settings)
    assert sum(log.losses[-30:]) / 30 < sum(log.losses[:30]) / 30
    scores = score_lists(reranker, GENRE_RECORDS, valid)
    blend, trials = choose_blend(valid, scores)
    assert set(trials) >= {0.0, 1.0}
    provenance = Provenance("tiny", model_fingerprint(base.config), "items", "", 24, "abc")
    artifact = RerankArtifact(provenance, reranker.prompts.settings, blend,
                              {"first_stage": trials[0.0], "llm": trials[1.0]},
                              {"steps": log.steps})
    artifact.save(tmp_path / "rerank", model)
    loaded = RerankArtifact.load(tmp_path / "rerank")
    assert loaded == artifact
    from peft import PeftModel

    fresh, _ = load(tiny)
    merged = PeftModel.from_pretrained(fresh, tmp_path / "rerank" / "adapter").merge_and_unload()
    reloaded = ListwiseReranker(merged, tokenizer, blend=loaded.blend)
    again = score_lists(reloaded, GENRE_RECORDS, valid[:4])
    assert [v for row in again for v in row] == pytest.approx(
        [v for row in scores[:4] for v in row], abs=1e-4)


def provenance(**changes: object) -> Provenance:
    values: dict[str, object] = {"base_model": "smollm2", "base_fingerprint": "f1",
                                 "collection": "items", "tenant": "", "catalog_items": 1000,
                                 "first_stage": "s1"}
    return Provenance(**{**values, **changes})  # type: ignore[arg-type]  # why: test helper


@pytest.mark.parametrize(("change", "message"), [
    ({"base_fingerprint": "f2"}, "trained on the LLM"),
    ({"collection": "other"}, "collection"),
    ({"tenant": "shop"}, "tenant"),
    ({"catalog_items": 1200}, "had 1,000 items, it now has 1,200"),
    ({"first_stage": "s2"}, "train-seq ran since"),
])
def test_a_stale_artefact_is_refused_with_the_reason(change: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(ModelUnavailable, match=message):
        check_provenance(provenance(), provenance(**change))
    check_provenance(provenance(), provenance(catalog_items=1050))  # small growth is fine


def test_unreadable_or_missing_artefacts_say_so(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="run `mmrec train-rerank`"):
        RerankArtifact.load(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "rerank.json").write_text('{"format": 99}')
    with pytest.raises(ModelUnavailable, match="format 99"):
        RerankArtifact.load(tmp_path / "bad")


def test_folder_fingerprint_follows_the_metadata_files(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    before = folder_fingerprint(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")  # only metadata counts
    assert folder_fingerprint(tmp_path) == before
    (tmp_path / "model.json").write_text('{"epochs": 2}')
    assert folder_fingerprint(tmp_path) != before
