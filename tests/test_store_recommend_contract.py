"""The VectorStore contract, recommendation part: recommend channels and stored vectors.

A channel may be Qdrant's recommend query (``RecommendVectors``: positive and
negative examples, ``best_score`` or ``sum_scores``), alone or as a prefetch of a
fused query; both backends must score it as Qdrant defines it (computed here by
hand from the stored, normalised vectors) and agree with each other. Then
``vectors`` and ``set_vectors``, which feed recommend queries and behaviour
vectors. Popularity is in test_store_popularity_contract.py; backends and
helpers in tests/store_fixtures.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from engine.domain import (
    ChannelQuery,
    HybridQuery,
    InvalidInput,
    ItemFilter,
    ItemRecord,
    Match,
    RecommendVectors,
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


# -- a random catalog, so no two items tie on any score ----------------------------------------

_rng = np.random.default_rng(7)
VECTORS: dict[str, dict[str, np.ndarray]] = {
    f"r{n:02d}": {"fused": _rng.standard_normal(8), "clip": _rng.standard_normal(4)}
    for n in range(12)
}
"""Item id -> its fused and clip vectors (not normalised: the store normalises)."""

POS = [VECTORS["r03"]["fused"] * 3.0, _rng.standard_normal(8)]
NEG = [VECTORS["r07"]["fused"], _rng.standard_normal(8)]
CLIP_QUERY = _rng.standard_normal(4)


def kind(item_id: str) -> str:
    """Even items are films, odd ones series."""
    return "film" if int(item_id[1:]) % 2 == 0 else "series"


def fill(store: VectorStore) -> None:
    """The catalog for tenant ``shop``, and the same vectors under tenant ``other``."""
    store.upsert([
        StoredItem(ItemRecord(id=key, tenant=tenant, attributes={"kind": kind(key)}), vectors)
        for tenant in (TENANT, "other")
        for key, vectors in VECTORS.items()
        if tenant == TENANT or key < "r04"
    ])


@pytest.fixture
def catalog(backend: Backend) -> VectorStore:
    """A store holding the random catalog."""
    store = backend.open()
    fill(store)
    return store


def unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` normalised to length 1 (as Qdrant keeps cosine vectors)."""
    return np.asarray(vector, np.float64) / np.linalg.norm(vector)


def squash(x: float) -> float:
    """Qdrant's best_score transform of a similarity: 0.5 + 0.5 * x / (1 + |x|)."""
    return 0.5 + 0.5 * x / (1 + abs(x))


def recommend_score(query: RecommendVectors, vector: np.ndarray) -> float:
    """The recommend score of a stored vector, computed by hand (see ``RecommendVectors``)."""
    positive = [float(unit(vector) @ unit(p)) for p in query.positives]
    negative = [float(unit(vector) @ unit(n)) for n in query.negatives]
    if query.strategy == "sum_scores":
        return sum(positive) - sum(negative)
    best_positive = max(positive, default=-math.inf)
    best_negative = max(negative, default=-math.inf)
    return squash(best_positive) if best_positive > best_negative else -squash(best_negative)


def expected(query: RecommendVectors, keys: list[str] | None = None) -> list[tuple[str, float]]:
    """(id, score) of the catalog's items (or of ``keys``) by hand, best first."""
    scored = [(key, recommend_score(query, VECTORS[key]["fused"])) for key in keys or VECTORS]
    return sorted(scored, key=lambda pair: -pair[1])


QUERIES = {
    "best-score": RecommendVectors(POS),
    "best-score-negatives": RecommendVectors(POS, NEG),
    "sum-scores": RecommendVectors(POS, strategy="sum_scores"),
    "sum-scores-negatives": RecommendVectors(POS, NEG, "sum_scores"),
    "negatives-only-best": RecommendVectors([], NEG),
    "negatives-only-sum": RecommendVectors((), NEG[:1], "sum_scores"),
}


# -- recommend channels, on every backend --------------------------------------------------------


@pytest.mark.parametrize("name", QUERIES)
def test_a_recommend_channel_scores_as_qdrant_defines(catalog: VectorStore, name: str) -> None:
    query = QUERIES[name]
    hits = catalog.hybrid_search(HybridQuery(
        [ChannelQuery("fused", query, 12)], limit=12, tenant=TENANT, with_channel_hits=True
    ))

    want = expected(query)
    assert ids(hits) == [key for key, _ in want]
    assert [h.score for h in hits] == pytest.approx([score for _, score in want], abs=1e-5)
    assert [h.channels["fused"].rank for h in hits] == list(range(1, 13))
    assert [h.channels["fused"].score for h in hits] == pytest.approx([h.score for h in hits])


def test_a_recommend_channel_fuses_with_another_channel(catalog: VectorStore) -> None:
    query = QUERIES["best-score-negatives"]
    hits = catalog.hybrid_search(HybridQuery(
        [ChannelQuery("fused", query, 12), ChannelQuery("clip", CLIP_QUERY, 12, weight=2.0)],
        limit=12, tenant=TENANT, rrf_k=3, with_channel_hits=True,
    ))

    fused_rank = {key: rank for rank, (key, _) in enumerate(expected(query), start=1)}
    clip = sorted(VECTORS, key=lambda key: -float(unit(VECTORS[key]["clip"]) @ unit(CLIP_QUERY)))
    clip_rank = {key: rank for rank, key in enumerate(clip, start=1)}
    assert len(hits) == 12
    for hit in hits:
        key = hit.record.id
        assert hit.channels["fused"].rank == fused_rank[key]
        assert hit.channels["fused"].score == pytest.approx(
            recommend_score(query, VECTORS[key]["fused"]), abs=1e-5
        )
        assert hit.channels["clip"].rank == clip_rank[key]
        assert hit.score == pytest.approx(
            1 / (3 - 1 + fused_rank[key]) + 1 / (3 - 1 + clip_rank[key] / 2.0), rel=1e-5
        )
    assert [(h.score, h.record.id) for h in hits] == sorted(
        [(h.score, h.record.id) for h in hits], key=lambda pair: (-pair[0], pair[1])
    )


def test_a_recommend_channel_applies_the_filter(catalog: VectorStore) -> None:
    query = QUERIES["sum-scores-negatives"]
    films = ItemFilter(must=(Match("kind", "film"),), exclude_ids=("r00",))
    single = catalog.hybrid_search(
        HybridQuery([ChannelQuery("fused", query, 3)], limit=10, tenant=TENANT, filter=films)
    )
    allowed = [key for key in VECTORS if kind(key) == "film" and key != "r00"]
    want = expected(query, allowed)[:3]
    assert ids(single) == [key for key, _ in want]
    assert [h.score for h in single] == pytest.approx([score for _, score in want], abs=1e-5)

    fused = catalog.hybrid_search(HybridQuery(
        [ChannelQuery("fused", query, 4), ChannelQuery("clip", CLIP_QUERY, 4)],
        limit=10, tenant=TENANT, filter=films, with_channel_hits=True,
    ))
    assert fused and set(ids(fused)) <= set(allowed)
    for hit in fused:  # ranked within the filtered items, inside every prefetch
        assert all(standing.rank <= 4 for standing in hit.channels.values())


def test_a_recommend_channel_stays_within_the_tenant(catalog: VectorStore) -> None:
    query = QUERIES["best-score"]
    hits = catalog.hybrid_search(
        HybridQuery([ChannelQuery("fused", query, 12)], limit=12, tenant="other")
    )
    assert ids(hits) == [key for key, _ in expected(query, ["r00", "r01", "r02", "r03"])]
    assert {h.record.tenant for h in hits} == {"other"}


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        pytest.param(ChannelQuery("fused", RecommendVectors([]), 5), "at least one positive",
                     id="no-examples"),
        pytest.param(ChannelQuery("colour", RecommendVectors([at(0)]), 5), "unknown vector",
                     id="unknown-vector"),
        pytest.param(ChannelQuery("fused", RecommendVectors([at(0, 5)]), 5), "shape",
                     id="wrong-size"),
        pytest.param(ChannelQuery("fused", RecommendVectors([at(0)], [np.zeros(8)]), 5),
                     "all zeros", id="zero-negative"),
        pytest.param(ChannelQuery("fused", RecommendVectors([np.full(8, np.nan)]), 5), "NaN",
                     id="nan"),
        pytest.param(ChannelQuery("fused", RecommendVectors(at(0)), 5),  # type: ignore[arg-type]
                     "sequence of vectors", id="one-vector-not-a-list"),
        pytest.param(ChannelQuery("fused", RecommendVectors([at(0)], strategy="max"), 5),  # type: ignore[arg-type]
                     "strategy", id="strategy"),
    ],
)
def test_bad_recommend_channels_are_rejected(
    catalog: VectorStore, channel: ChannelQuery, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        catalog.hybrid_search(HybridQuery([channel], limit=5, tenant=TENANT))


def test_recommend_needs_a_dense_vector(backend: Backend) -> None:
    store = backend.open(VectorSchema(dict(SCHEMA.dense), sparse=("lexical",)))
    with pytest.raises(InvalidInput, match="dense vectors only"):
        store.hybrid_search(HybridQuery(
            [ChannelQuery("lexical", RecommendVectors([at(0)]), 5)], limit=5, tenant=TENANT
        ))


def test_both_backends_give_the_same_recommend_answers(tmp_path: Path) -> None:
    """Same recommend calls, same ids in the same order, same scores and channel standing.

    RRF gives equal scores to items at equal ranks in different channels; which of
    them a limit cuts off differs between the backends (and between runs of the local
    mode), so the fused queries' limits keep every candidate: the store then orders
    the ties by item id on both.
    """
    client = QdrantClient(":memory:")
    edge = EdgeStore(tmp_path / "edge", SCHEMA)
    server = ServerStore(client, SCHEMA, collection="congruence")
    for store in (edge, server):
        fill(store)
    series = ItemFilter(must=(Match("kind", "series"),))
    clip = ChannelQuery("clip", CLIP_QUERY, 8)
    queries = [
        *(HybridQuery([ChannelQuery("fused", q, 12)], limit=10, tenant=TENANT)
          for q in QUERIES.values()),
        *(HybridQuery([ChannelQuery("fused", q, 8), clip], limit=16, tenant=TENANT, rrf_k=2)
          for q in QUERIES.values()),
        HybridQuery([ChannelQuery("fused", QUERIES["best-score-negatives"], 6, 3.0), clip],
                    limit=16, tenant=TENANT, filter=series),
        HybridQuery([ChannelQuery("fused", QUERIES["sum-scores"], 12), clip], limit=10,
                    tenant=TENANT, fusion="dbsf"),
        HybridQuery([ChannelQuery("fused", QUERIES["negatives-only-sum"], 12)], limit=10,
                    tenant="other"),
    ]
    try:
        for query in queries:
            query = replace(query, with_channel_hits=True)
            want, got = edge.hybrid_search(query), server.hybrid_search(query)
            assert want and ids(got) == ids(want), query
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
            assert [{n: c.rank for n, c in h.channels.items()} for h in got] == [
                {n: c.rank for n, c in h.channels.items()} for h in want
            ]
            assert [{n: c.score for n, c in h.channels.items()} for h in got] == [
                pytest.approx({n: c.score for n, c in h.channels.items()}, abs=1e-5)
                for h in want
            ]
    finally:
        edge.close()
        server.close()
        client.close()


# -- stored vectors: vectors() and set_vectors(), on every backend -------------------------------


@pytest.fixture
def store_with_items(backend: Backend) -> VectorStore:
    """Items a (fused 3-4-0 vector, text) and b (fused, clip at 30 degrees) of tenant shop."""
    store = backend.open()
    store.upsert([
        StoredItem(ItemRecord(id="a", tenant=TENANT, title="A", attributes={"n": 1}),
                   {"fused": np.array([3.0, 4.0, 0, 0, 0, 0, 0, 0]), "text": at(0, 6)}),
        item("b", 10.0, clip=30.0, title="B"),
    ])
    return store


def test_vectors_come_back_normalised(store_with_items: VectorStore) -> None:
    found = store_with_items.vectors(["b", "missing", "a", "b"], tenant=TENANT, using="clip")

    assert list(found) == ["b"]  # a has no clip vector; unknown ids are left out
    assert found["b"].dtype == np.float32
    np.testing.assert_allclose(found["b"], at(30, 4), atol=1e-6)
    fused = store_with_items.vectors(["a", "b"], tenant=TENANT, using="fused")
    np.testing.assert_allclose(fused["a"], unit(np.array([3.0, 4.0, 0, 0, 0, 0, 0, 0])), atol=1e-6)
    assert store_with_items.vectors(["a"], tenant="other-shop", using="fused") == {}
    assert store_with_items.vectors([], tenant=TENANT, using="fused") == {}


def test_vectors_need_a_dense_vector_name(backend: Backend) -> None:
    store = backend.open(VectorSchema(dict(SCHEMA.dense), sparse=("lexical",)))
    with pytest.raises(InvalidInput, match="colour"):
        store.vectors(["a"], tenant=TENANT, using="colour")
    with pytest.raises(InvalidInput, match="sparse"):
        store.vectors(["a"], tenant=TENANT, using="lexical")


def test_set_vectors_replaces_one_vector_and_keeps_the_rest(
    store_with_items: VectorStore,
) -> None:
    store = store_with_items
    before = store.get(["a", "b"], tenant=TENANT)

    updated = store.set_vectors(
        {"a": at(90, 4) * 2, "b": at(0, 4), "ghost": at(0, 4)}, tenant=TENANT, using="clip"
    )

    assert updated == 2  # the unknown item is skipped, not created
    assert store.count() == 2 and store.get(["ghost"], tenant=TENANT) == []
    assert store.get(["a", "b"], tenant=TENANT) == before  # payloads untouched
    clip = store.vectors(["a", "b"], tenant=TENANT, using="clip")
    np.testing.assert_allclose(clip["a"], at(90, 4), atol=1e-6)
    np.testing.assert_allclose(clip["b"], at(0, 4), atol=1e-6)
    assert ids(store.search(at(0, 4), using="clip", limit=5, tenant=TENANT)) == ["b", "a"]
    assert ids(store.search(at(0, 6), using="text", limit=5, tenant=TENANT)) == ["a"]
    np.testing.assert_allclose(  # the other vectors are kept
        store.vectors(["a"], tenant=TENANT, using="fused")["a"],
        unit(np.array([3.0, 4.0, 0, 0, 0, 0, 0, 0])), atol=1e-6,
    )
    assert store.set_vectors({"a": at(0, 4)}, tenant="other-shop", using="clip") == 0
    assert store.set_vectors({}, tenant=TENANT, using="clip") == 0


@pytest.mark.parametrize(
    ("vectors", "using", "message"),
    [
        pytest.param({"a": at(0, 4), "b": np.ones(5)}, "clip", "shape", id="wrong-size"),
        pytest.param({"a": at(0, 4)}, "colour", "unknown vector", id="unknown-name"),
        pytest.param({"a": at(0, 4), "b": np.full(4, np.nan)}, "clip", "NaN", id="nan"),
        pytest.param({"a": np.zeros(4)}, "clip", "all zeros", id="all-zero"),
    ],
)
def test_set_vectors_rejects_bad_vectors_and_writes_nothing(
    store_with_items: VectorStore, vectors: dict[str, Any], using: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        store_with_items.set_vectors(vectors, tenant=TENANT, using=using)
    assert list(store_with_items.vectors(["a", "b"], tenant=TENANT, using="clip")) == ["b"]
