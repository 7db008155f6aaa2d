"""The VectorStore contract, hybrid part: the same hybrid calls give the same answers
on every backend.

Covers hybrid search (RRF and DBSF fusion, channel weights, per-channel hits),
attribute filters, the sparse BM25 channel with its per-tenant IDF, and the
sparse side of the schema; then the same answers from both backends, and the
single-backend checks of sparse vectors (edge manifest and index build, server
IDF modifier). Backends and helpers are shared with test_store_contract.py
(tests/store_fixtures.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from engine.domain import (
    ChannelQuery,
    HybridQuery,
    InvalidInput,
    ItemFilter,
    ItemRecord,
    Match,
    MatchAny,
    Range,
    SchemaMismatch,
    SparseVector,
    StoredItem,
)
from engine.store import EdgeStore, ServerStore, VectorSchema, VectorStore
from tests.store_fixtures import (
    BACKENDS,
    QDRANT_WARNINGS,
    SCHEMA,
    TENANT,
    Backend,
    at,
    ids,
    item,
    open_backend,
)

pytestmark = QDRANT_WARNINGS


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn; ``server-url`` only when QDRANT_URL names a server."""
    yield from open_backend(request.param, tmp_path)


# -- hybrid search, filters and the lexical channel, on every backend --------------------------

HYBRID = VectorSchema({"fused": 8, "text": 6}, sparse=("lexical",))
"""The hybrid tests' schema: two dense channels and the sparse BM25 channel."""


def sparse(terms: Mapping[int, float]) -> SparseVector:
    """A sparse vector from term id -> weight."""
    indices = sorted(terms)
    return SparseVector(
        np.array(indices, dtype=np.int64), np.array([terms[i] for i in indices], np.float32)
    )


# id: fused angle (ranks a..f), text angle (ranks f..a), BM25 terms, attributes.
CATALOG: dict[str, tuple[float, float, dict[int, float], dict[str, Any]]] = {
    "a": (5, 53, {10: 1.0, 30: 1.2},
          {"kind": "film", "genres": ["drama", "war"], "year": 1999, "in_stock": True}),
    "b": (15, 43, {10: 1.1}, {"kind": "film", "genres": ["comedy"], "year": 2005}),
    "c": (25, 33, {10: 0.9, 20: 1.5}, {"kind": "series", "genres": ["drama"], "year": 1985}),
    "d": (35, 23, {10: 1.3},
          {"kind": "film", "genres": ["horror", "comedy"], "year": 2010, "in_stock": True}),
    "e": (45, 13, {10: 0.8, 30: 1.0}, {"kind": "series", "genres": ["war"], "year": 1970}),
    "f": (55, 3, {}, {"kind": "film", "genres": [], "year": 2020, "in_stock": False}),
}
"""Term 10 is in every tenant item with terms, 20 only in c, 30 in a and e; f has no terms
(an empty sparse vector, left out). Lexical ranking for terms {10, 20, 30}: c, a, e, d, b."""

LEXICAL_QUERY = sparse({10: 1.0, 20: 1.0, 30: 1.0})


def idf(df: int, n: int) -> float:
    """Qdrant's IDF modifier: ln(1 + (n - df + 0.5) / (df + 0.5))."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def fill_catalog(store: VectorStore) -> None:
    """The catalog for tenant ``shop``, plus look-alikes in tenant ``other`` that score higher
    and carry term 20 everywhere (so a global IDF would differ from the tenant's)."""
    items = [
        StoredItem(
            ItemRecord(id=key, tenant=TENANT, title=f"title {key}", attributes=attributes),
            {"fused": at(fused), "text": at(text, 6), "lexical": sparse(terms)},
        )
        for key, (fused, text, terms, attributes) in CATALOG.items()
    ]
    items += [
        StoredItem(
            ItemRecord(id=key, tenant="other", attributes={"kind": "film"}),
            {"fused": at(1 + n), "text": at(2 + 3 * n, 6),
             "lexical": sparse({20: 1.0 + n / 4, 40 + n: 1.0})},
        )
        for n, key in enumerate(["a", "x", "y", "z"])
    ]
    store.upsert(items)


def channels(
    limit: int = 10, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> list[ChannelQuery]:
    """A query on all three channels: fused and text towards 0 degrees, the lexical terms."""
    return [
        ChannelQuery("fused", at(0), limit, weights[0]),
        ChannelQuery("text", at(0, 6), limit, weights[1]),
        ChannelQuery("lexical", LEXICAL_QUERY, limit, weights[2]),
    ]


@pytest.fixture
def catalog(backend: Backend) -> VectorStore:
    """A store on the hybrid schema holding the catalog."""
    store = backend.open(HYBRID)
    fill_catalog(store)
    return store


def test_the_lexical_channel_scores_bm25_with_the_tenants_idf(catalog: VectorStore) -> None:
    hits = catalog.search(LEXICAL_QUERY, using="lexical", limit=10, tenant=TENANT)

    assert ids(hits) == ["c", "a", "e", "d", "b"]  # f has no terms: not on this channel
    n = 5  # the tenant's items with terms; tenant "other" does not count
    assert hits[0].score == pytest.approx(0.9 * idf(5, n) + 1.5 * idf(1, n), rel=1e-5)
    assert hits[1].score == pytest.approx(1.0 * idf(5, n) + 1.2 * idf(2, n), rel=1e-5)


RANKS = {"a": (1, 6, 2), "b": (2, 5, 5), "c": (3, 4, 1), "d": (4, 3, 4), "e": (5, 2, 3),
         "f": (6, 1, None)}
"""Each item's rank on (fused, text, lexical) for the query of ``channels()``."""


def rrf_order(k: int, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> list[str]:
    """The RRF order computed by hand: sum of 1 / (k - 1 + rank / weight), ranks 1-based."""
    def score(key: str) -> float:
        return sum(1 / (k - 1 + rank / w) for rank, w in zip(RANKS[key], weights, strict=True)
                   if rank is not None)
    return sorted(RANKS, key=lambda key: -score(key))


def test_hybrid_rrf_ranks_by_every_channel_and_reports_each(catalog: VectorStore) -> None:
    hits = catalog.hybrid_search(HybridQuery(
        channels(), limit=6, tenant=TENANT, rrf_k=2, with_channel_hits=True
    ))

    assert ids(hits) == rrf_order(2) == ["a", "c", "e", "b", "d", "f"]
    for hit in hits:
        ranks = dict(zip(("fused", "text", "lexical"), RANKS[hit.record.id], strict=True))
        assert {name: c.rank for name, c in hit.channels.items()} == {
            name: rank for name, rank in ranks.items() if rank is not None
        }
    a = hits[0]
    assert a.score == pytest.approx(1 / 2 + 1 / 7 + 1 / 3, rel=1e-5)
    assert a.channels["fused"].score == pytest.approx(math.cos(math.radians(5)), abs=1e-5)
    assert a.channels["text"].score == pytest.approx(math.cos(math.radians(53)), abs=1e-5)
    assert a.record.attributes["genres"] == ["drama", "war"]


@pytest.mark.parametrize(
    ("k", "weights"),
    [(2, (1.0, 5.0, 1.0)), (2, (5.0, 1.0, 1.0)), (1, (1.0, 1.0, 3.0)), (60, (0.5, 1.0, 2.0))],
)
def test_rrf_k_and_weights_give_the_hand_computed_order(
    catalog: VectorStore, k: int, weights: tuple[float, float, float]
) -> None:
    query = HybridQuery(channels(weights=weights), limit=6, tenant=TENANT, rrf_k=k)
    assert ids(catalog.hybrid_search(query)) == rrf_order(k, weights)


@pytest.mark.parametrize(
    ("item_filter", "expected"),
    [
        pytest.param(ItemFilter(must=(Match("kind", "film"),)), "abdf", id="match-string"),
        pytest.param(ItemFilter(must=(Match("genres", "drama"),)), "ac", id="match-in-list"),
        pytest.param(ItemFilter(must=(Match("in_stock", True),)), "ad", id="match-bool"),
        pytest.param(ItemFilter(must=(Match("year", 1985),)), "c", id="match-int"),
        pytest.param(ItemFilter(must=(Match("in_stock", 1),)), "", id="int-is-not-bool"),
        pytest.param(ItemFilter(must_not=(Match("in_stock", False),)), "abcde",
                     id="must-not-bool"),
        pytest.param(ItemFilter(must=(MatchAny("genres", ("war", "horror")),)), "ade",
                     id="match-any"),
        pytest.param(ItemFilter(must=(Range("year", gte=1980, lt=2010),)), "abc", id="range"),
        pytest.param(ItemFilter(must_not=(Match("genres", "comedy"),)), "acef", id="must-not"),
        pytest.param(ItemFilter(exclude_ids=("a", "c", "unknown")), "bdef", id="exclude-ids"),
        pytest.param(
            ItemFilter(must=(Match("kind", "film"), Range("year", gt=1999)),
                       must_not=(MatchAny("genres", ("horror",)),)),
            "bf", id="combined",
        ),
        pytest.param(ItemFilter(must=(Match("missing", "x"),)), "", id="missing-key"),
    ],
)
def test_filters_select_the_expected_items(
    catalog: VectorStore, item_filter: ItemFilter, expected: str
) -> None:
    single = HybridQuery([ChannelQuery("fused", at(0), 10)], limit=10, tenant=TENANT,
                         filter=item_filter)
    assert ids(catalog.hybrid_search(single)) == list(expected)  # fused order: a..f

    fused = catalog.hybrid_search(HybridQuery(channels(), limit=10, tenant=TENANT,
                                              filter=item_filter, with_channel_hits=True))
    assert sorted(ids(fused)) == list(expected)
    for hit in fused:  # every channel ranked within the filtered items only
        assert all(standing.rank <= len(expected) for standing in hit.channels.values())


def test_the_filter_applies_inside_every_prefetch(catalog: VectorStore) -> None:
    series = ItemFilter(must=(Match("kind", "series"),))
    query = HybridQuery(
        [ChannelQuery("fused", at(0), 2), ChannelQuery("text", at(0, 6), 2)],
        limit=5, tenant=TENANT, filter=series,
    )
    # Filtered only after the prefetches, their top 2 (a, b and f, e) would leave only e.
    assert sorted(ids(catalog.hybrid_search(query))) == ["c", "e"]


def test_hybrid_search_stays_within_the_tenant(catalog: VectorStore) -> None:
    def found(tenant: str, item_filter: ItemFilter | None = None) -> list[str]:
        query = HybridQuery(channels(), limit=10, tenant=tenant, filter=item_filter or ItemFilter())
        return sorted(ids(catalog.hybrid_search(query)))

    assert found(TENANT) == list("abcdef")
    assert found("other") == ["a", "x", "y", "z"]
    assert found("other", ItemFilter(exclude_ids=("x",))) == ["a", "y", "z"]
    assert found(TENANT, ItemFilter(exclude_ids=("x",))) == list("abcdef")
    assert found("nobody") == []
    (hit,) = catalog.hybrid_search(HybridQuery(channels(), limit=1, tenant="other"))
    assert hit.record.tenant == "other"


def test_empty_sparse_vectors_are_left_out(catalog: VectorStore) -> None:
    empty = sparse({})
    assert catalog.search(empty, using="lexical", limit=5, tenant=TENANT) == []
    query = HybridQuery([ChannelQuery("fused", at(0), 3), ChannelQuery("lexical", empty, 3)],
                        limit=3, tenant=TENANT, with_channel_hits=True)
    hits = catalog.hybrid_search(query)  # the empty channel is dropped: plain fused search
    assert ids(hits) == ["a", "b", "c"]
    assert hits[0].score == pytest.approx(math.cos(math.radians(5)), abs=1e-5)
    assert {name for hit in hits for name in hit.channels} == {"fused"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"channels": [ChannelQuery("colour", at(0), 5)]}, "colour", id="unknown"),
        pytest.param({"channels": [ChannelQuery("fused", at(0), 5)] * 2}, "once",
                     id="duplicate-channel"),
        pytest.param({"channels": [ChannelQuery("fused", LEXICAL_QUERY, 5)]}, "dense",
                     id="sparse-for-dense"),
        pytest.param({"channels": [ChannelQuery("lexical", at(0), 5)]}, "SparseVector",
                     id="dense-for-sparse"),
        pytest.param({"channels": [ChannelQuery(
            "lexical", SparseVector(np.array([3, 1]), np.array([1.0, 1.0])), 5)]},
            "increasing", id="unsorted-sparse"),
        pytest.param({"channels": [ChannelQuery(
            "lexical", SparseVector(np.array([1]), np.array([np.nan])), 5)]},
            "NaN", id="nan-sparse"),
        pytest.param({"channels": [ChannelQuery("fused", at(0), 5, weight=0.0)]}, "weight",
                     id="zero-weight"),
        pytest.param({"channels": [ChannelQuery("fused", at(0), 0)]}, "limit",
                     id="channel-limit"),
        pytest.param({"channels": []}, "at least one channel", id="no-channels"),
        pytest.param({"limit": 0}, "limit", id="limit"),
        pytest.param({"rrf_k": 0}, "rrf_k", id="rrf-k"),
        pytest.param({"fusion": "max"}, "fusion", id="fusion"),
        pytest.param({"filter": ItemFilter(must=(Match("a b", "x"),))}, "attribute name",
                     id="bad-key"),
        pytest.param({"filter": ItemFilter(must=(Match("year", 1.5),))}, "Range",
                     id="match-float"),
        pytest.param({"filter": ItemFilter(must=(MatchAny("genres", ()),))}, "one or more",
                     id="match-any-empty"),
        pytest.param({"filter": ItemFilter(must=(MatchAny("genres", ("a", 1)),))},
                     "all strings", id="match-any-mixed"),
        pytest.param({"filter": ItemFilter(must_not=(Range("year"),))}, "bound",
                     id="range-unbounded"),
    ],
)
def test_bad_hybrid_queries_are_rejected(
    catalog: VectorStore, change: dict[str, Any], message: str
) -> None:
    options: dict[str, Any] = {"channels": channels(), "limit": 5, "tenant": TENANT, **change}
    with pytest.raises(InvalidInput, match=message):
        catalog.hybrid_search(HybridQuery(**options))


def test_bad_sparse_vectors_are_rejected_and_nothing_is_written(backend: Backend) -> None:
    store = backend.open(HYBRID)
    bad = StoredItem(ItemRecord(id="bad", tenant=TENANT),
                     {"lexical": SparseVector(np.array([2, 2]), np.array([1.0, 1.0]))})
    with pytest.raises(InvalidInput, match="increasing"):
        store.upsert([StoredItem(ItemRecord(id="good", tenant=TENANT), {"fused": at(0)}), bad])
    with pytest.raises(InvalidInput, match="sparse"):
        store.upsert([StoredItem(ItemRecord(id="bad", tenant=TENANT), {"lexical": at(0)})])
    assert store.count() == 0


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        pytest.param(VectorSchema({"fused": 8, "text": 6}), "sparse vector 'lexical' not in",
                     id="sparse-dropped"),
        pytest.param(VectorSchema({"fused": 8, "text": 6}, sparse=("lexical", "tags")),
                     "sparse vector 'tags' is missing", id="sparse-added"),
    ],
)
def test_reopening_with_other_sparse_vectors_fails(
    backend: Backend, other: VectorSchema, expected: str
) -> None:
    backend.open(HYBRID).close()
    with pytest.raises(SchemaMismatch, match=expected):
        backend.open(other)


def test_reopening_keeps_sparse_vectors_and_their_idf(backend: Backend) -> None:
    first = backend.open(HYBRID)
    fill_catalog(first)
    before = first.search(LEXICAL_QUERY, using="lexical", limit=10, tenant=TENANT)
    first.flush()
    first.close()

    with backend.open(HYBRID) as again:
        after = again.search(LEXICAL_QUERY, using="lexical", limit=10, tenant=TENANT)
    assert ids(after) == ids(before) == ["c", "a", "e", "d", "b"]
    assert [h.score for h in after] == pytest.approx([h.score for h in before], rel=1e-6)


def test_both_backends_give_the_same_hybrid_answers(tmp_path: Path) -> None:
    """Same calls, same ids in the same order, same fused scores and channel ranks.

    Ties within a channel are ordered differently by the two backends (Qdrant does not
    define their order), which shifts RRF ranks: the catalog has none. Equal fused
    scores are ordered by item id by the store, on both.
    """
    client = QdrantClient(":memory:")
    edge = EdgeStore(tmp_path / "edge", HYBRID)
    server = ServerStore(client, HYBRID, collection="congruence")
    for store in (edge, server):
        fill_catalog(store)
        store.delete(["z"], tenant="other")  # deleted points must leave the IDF on both
    drama = ItemFilter(must=(Match("genres", "drama"),))
    queries = [
        HybridQuery(channels(), limit=6, tenant=TENANT),
        HybridQuery(channels(4, (2.0, 0.5, 1.5)), limit=4, tenant=TENANT, rrf_k=1),
        HybridQuery(channels(), limit=6, tenant=TENANT, fusion="dbsf"),
        HybridQuery(channels(3), limit=6, tenant=TENANT, fusion="dbsf", filter=drama),
        HybridQuery(channels(), limit=6, tenant=TENANT, filter=ItemFilter(
            must=(Range("year", lte=2010),), must_not=(Match("kind", "series"),),
            exclude_ids=("b",))),
        HybridQuery(channels(), limit=6, tenant="other", rrf_k=10),
        HybridQuery([ChannelQuery("lexical", LEXICAL_QUERY, 10)], limit=6, tenant="other"),
    ]
    try:
        for query in queries:
            query = replace(query, with_channel_hits=True)
            want, got = edge.hybrid_search(query), server.hybrid_search(query)
            assert ids(got) == ids(want), query
            assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-5)
            assert [{n: c.rank for n, c in h.channels.items()} for h in got] == [
                {n: c.rank for n, c in h.channels.items()} for h in want
            ]
    finally:
        edge.close()
        server.close()
        client.close()


# -- sparse vectors on one backend: edge manifest and index build, server IDF ----------------------


def test_a_manifest_from_before_sparse_vectors_still_opens(tmp_path: Path) -> None:
    with EdgeStore(tmp_path, SCHEMA) as store:
        store.upsert([item("a")])
    manifest = tmp_path / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["schema"].pop("sparse")  # what the manifest looked like before sparse vectors
    manifest.write_text(json.dumps(data), encoding="utf-8")

    with EdgeStore(tmp_path, SCHEMA) as store:
        assert ids(store.search(at(0), using="fused", limit=5, tenant=TENANT)) == ["a"]
    with pytest.raises(SchemaMismatch, match="sparse vector 'lexical' is missing"):
        EdgeStore(tmp_path, VectorSchema(dict(SCHEMA.dense), sparse=("lexical",)))


def test_hybrid_answers_survive_the_background_index_build(tmp_path: Path) -> None:
    with EdgeStore(tmp_path, HYBRID, indexing_threshold_kb=1) as store:
        fill_catalog(store)
        query = HybridQuery(channels(), limit=6, tenant=TENANT, with_channel_hits=True)
        before = store.hybrid_search(query)
        store.optimize(wait=True)
        assert store.shard_path.name == "shard-000002"
        store.upsert([StoredItem(ItemRecord(id="new", tenant=TENANT),
                                 {"lexical": sparse({99: 1.0})})])
        after = store.hybrid_search(query)
        assert ids(store.search(sparse({99: 1.0}), using="lexical", limit=3,
                                tenant=TENANT)) == ["new"]
    assert ids(after) == ids(before) == rrf_order(60)
    assert [h.score for h in after] == pytest.approx([h.score for h in before], rel=1e-5)


def test_a_server_collection_without_the_idf_modifier_is_refused() -> None:
    client = QdrantClient(":memory:")
    client.create_collection(
        "plain",
        vectors_config={name: models.VectorParams(size=size, distance=models.Distance.COSINE)
                        for name, size in HYBRID.dense.items()},
        sparse_vectors_config={"lexical": models.SparseVectorParams()},
    )
    with pytest.raises(SchemaMismatch, match="'lexical' has no IDF modifier"):
        ServerStore(client, HYBRID, collection="plain")
    with ServerStore(client, HYBRID, collection="made") as store:  # one we create has it
        assert client.get_collection("made").config.params.sparse_vectors["lexical"].modifier \
            == models.Modifier.IDF
        assert store.count() == 0
    client.close()


def test_the_raw_query_timer_runs_the_same_query_on_qdrant_edge(tmp_path: Path) -> None:
    """``raw_query_seconds`` (the benchmarks' raw part) times a real query; no plan, no time."""
    with EdgeStore(tmp_path, HYBRID) as store:
        fill_catalog(store)
        query = HybridQuery(channels(), limit=6, tenant=TENANT)
        assert ids(store.hybrid_search(query)) == rrf_order(60)
        seconds = store.raw_query_seconds(query)
        assert 0.0 < seconds < 10.0
        empty = HybridQuery([ChannelQuery("lexical", sparse({}), 5)], limit=5, tenant=TENANT)
        assert store.raw_query_seconds(empty) == 0.0
