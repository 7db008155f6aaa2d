"""The search blend weight the retrieval benchmark chooses on its validation queries."""

from __future__ import annotations

from benchmarks.retrieval_quality import BASE, LLM_ROW, blended, choose_search_blend

FUSED = [f"item-{i}" for i in range(20)]


def test_weight_zero_keeps_the_fused_order_and_one_the_llms() -> None:
    by_llm = list(reversed(FUSED))
    assert blended(FUSED, by_llm, 0.0) == FUSED
    assert blended(FUSED, by_llm, 1.0) == by_llm


def _orders(llm_first: bool) -> tuple[dict, dict]:
    """40 queries whose one relevant item is last in the fused list; the LLM puts it first."""
    qrels, fused, by_llm = {}, {}, {}
    for q in range(40):
        qid = f"query-{q}"
        qrels[qid] = {FUSED[-1]: 1}
        fused[qid] = FUSED
        by_llm[qid] = [FUSED[-1], *FUSED[:-1]] if llm_first else FUSED
    return qrels, {BASE: fused, LLM_ROW: by_llm}


def test_a_clearly_better_llm_gets_weight_and_its_gain_shows_on_test() -> None:
    qrels, orders = _orders(llm_first=True)
    blend = choose_search_blend(qrels, orders)
    assert blend["chosen"] > 0
    assert blend["queries"]["validation"] + blend["queries"]["test"] == 40
    assert blend["test"]["blend"] > blend["test"]["hybrid"]


def test_an_llm_that_changes_nothing_gets_weight_zero() -> None:
    qrels, orders = _orders(llm_first=False)
    blend = choose_search_blend(qrels, orders)
    assert blend["chosen"] == 0.0
    assert blend["test"]["blend"] == blend["test"]["hybrid"]
