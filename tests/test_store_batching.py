"""Concurrent hybrid searches share one store request (engine.store.batched), on both backends.

Batches form deterministically as in test_batching.py: a gate holds the first store request
while other searches queue behind it. Every batched answer is compared with the same query
asked alone of the same real store (qdrant-edge, and qdrant-client's local mode for the
server backend); nothing here asserts speed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from engine.domain import ChannelQuery, FusedHit, HybridQuery, InvalidInput, ItemFilter, Match
from engine.store import VectorStore
from engine.store.batched import BatchedSearch
from engine.store.hybrid import HybridPlan
from tests.store_fixtures import QDRANT_WARNINGS, TENANT, at, open_backend
from tests.test_batching import Gated, hold_first, queue_in_order
from tests.test_store_hybrid_contract import HYBRID, LEXICAL_QUERY, fill_catalog

pytestmark = QDRANT_WARNINGS


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    """A store of each in-process backend, holding the hybrid contract's catalog."""
    for backend in open_backend(request.param, tmp_path):
        opened = backend.open(HYBRID)
        fill_catalog(opened)
        yield opened


def queries() -> list[HybridQuery]:
    """Searches that differ in every part a plan carries: channels, weights, limits,
    fusion inputs, a filter, and whether channel hits are asked for."""
    def channels(angle: float, lexical: bool = True) -> list[ChannelQuery]:
        found = [ChannelQuery("fused", at(angle), 10, 1.0), ChannelQuery("text", at(angle, 6),
                                                                          10, 0.5)]
        return found + ([ChannelQuery("lexical", LEXICAL_QUERY, 10, 1.0)] if lexical else [])
    return [
        HybridQuery(channels=channels(0), limit=5, tenant=TENANT, with_channel_hits=True),
        HybridQuery(channels=channels(50, lexical=False), limit=3, tenant=TENANT),
        HybridQuery(channels=channels(20), limit=6, tenant=TENANT,
                    filter=ItemFilter(must=(Match("kind", "film"),)), with_channel_hits=True),
        HybridQuery(channels=channels(30)[:1], limit=4, tenant=TENANT),
        HybridQuery(channels=channels(10), limit=6, tenant="other"),
    ]


def same(got: Sequence[FusedHit], want: Sequence[FusedHit]) -> None:
    """The same items in the same order with the same scores and channel standings."""
    assert [h.record.id for h in got] == [h.record.id for h in want]
    assert [h.score for h in got] == pytest.approx([h.score for h in want])
    assert [h.channels for h in got] == [h.channels for h in want]


def gate(store: VectorStore, max_batch: int = 32) -> Gated:
    """Put a gate in front of the store's real batched request and turn batching on (no
    window: the searches queued behind a held request form the next batch at once)."""
    searches = getattr(store, "searches")  # noqa: B009  (each backend's BatchedSearch)
    gated = Gated(searches._search_plans)
    store.searches = BatchedSearch(store.schema, gated)  # type: ignore[attr-defined]
    store.batch_searches(window_ms=0.0, max_batch=max_batch)
    return gated


def test_queued_searches_share_one_request_and_each_gets_its_own_answer(
        store: VectorStore) -> None:
    asked = queries()
    alone = [store.hybrid_search(q) for q in asked]  # batching is off until gate()
    gated = gate(store)
    first = hold_first(gated, store.hybrid_search, asked[0])
    batcher = store.searches._batcher  # type: ignore[attr-defined]
    rest = queue_in_order(batcher, store.hybrid_search, [(q,) for q in asked[1:]])
    gated.gate.set()
    answers = [first.finish(), *(caller.finish() for caller in rest)]
    assert [len(b) for b in gated.batches] == [1, len(asked) - 1]
    for got, want in zip(answers, alone, strict=True):
        same(got, want)
    assert store.search_batch_sizes() == {1: 1, len(asked) - 1: 1}


def test_max_batch_splits_the_queue_in_arrival_order(store: VectorStore) -> None:
    asked = queries()
    alone = [store.hybrid_search(q) for q in asked]
    gated = gate(store, max_batch=2)
    first = hold_first(gated, store.hybrid_search, asked[0])
    batcher = store.searches._batcher  # type: ignore[attr-defined]
    rest = queue_in_order(batcher, store.hybrid_search, [(q,) for q in asked[1:]])
    gated.gate.set()
    answers = [first.finish(), *(caller.finish() for caller in rest)]
    assert [len(b) for b in gated.batches] == [1, 2, 2]
    for got, want in zip(answers, alone, strict=True):
        same(got, want)


class FakeRefusal:
    """Injected fault: the backend refuses any request holding the plan of limit 3."""

    def __init__(self, inner: Gated) -> None:
        self.inner = inner

    def __call__(self, plans: list[HybridPlan]) -> list[list[FusedHit]]:
        if any(plan.limit == 3 for plan in plans):
            raise InvalidInput("the fake backend refuses limit 3")
        result: list[list[FusedHit]] = self.inner(plans)
        return result


def test_a_refused_search_fails_alone_and_its_batch_neighbours_are_answered(
        store: VectorStore) -> None:
    asked = queries()
    alone = [store.hybrid_search(q) for q in asked]
    gated = Gated(store.searches._search_plans)  # type: ignore[attr-defined]
    store.searches = BatchedSearch(store.schema, FakeRefusal(gated))  # type: ignore[attr-defined]
    store.batch_searches(window_ms=0.0, max_batch=32)
    first = hold_first(gated, store.hybrid_search, asked[0])
    batcher = store.searches._batcher  # type: ignore[attr-defined]
    rest = queue_in_order(batcher, store.hybrid_search, [(q,) for q in asked[1:]])
    gated.gate.set()
    same(first.finish(), alone[0])
    for caller, want in zip(rest, alone[1:], strict=True):
        caller.join(30)
        if caller.call.args[0].limit == 3:
            assert isinstance(caller.error, InvalidInput)
        else:
            assert caller.error is None
            same(caller.result, want)


def test_a_malformed_query_is_refused_in_its_own_thread_before_it_queues(
        store: VectorStore) -> None:
    gated = gate(store)
    with pytest.raises(InvalidInput):
        store.hybrid_search(HybridQuery(channels=[ChannelQuery("nope", at(0), 5, 1.0)],
                                        limit=5, tenant=TENANT))
    assert gated.batches == []
