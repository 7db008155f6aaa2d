"""The VectorStore contract: the same calls give the same answers on every backend.

Backends: ``edge`` (EdgeStore in a temp dir), ``server`` (ServerStore on
``QdrantClient(":memory:")``) and ``server-url`` (a real Qdrant server, only when
``QDRANT_URL`` is set). Vectors are built in a plane (``at(degrees)``) so the
cosine order, and the scores, are known in advance. The edge-only tests at the
end cover the data-dir lock and the background index build (copy, child
process, replay, swap).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from engine.config import StoreSettings
from engine.errors import FailedPrecondition, InvalidInput, SchemaMismatch, Unavailable
from engine.query import (
    ChannelQuery,
    HybridQuery,
    ItemFilter,
    Match,
    MatchAny,
    Range,
    SparseVector,
)
from engine.store import (
    EdgeStore,
    ServerStore,
    VectorSchema,
    VectorStore,
    edge_rebuild,
    open_store,
)
from engine.types import ItemRecord, StoredItem

pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
    # qdrant-client checks the server version on a thread; with no server it warns later.
    pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning"),
]

SCHEMA = VectorSchema({"fused": 8, "clip": 4, "text": 6})
TENANT = "shop"
REPO_ROOT = Path(__file__).resolve().parents[1]


def at(degrees: float, dim: int = 8) -> np.ndarray:
    """A unit vector in the plane of the first two axes; cosine to ``at(0)`` is cos(degrees)."""
    vector = np.zeros(dim, dtype=np.float32)
    vector[0], vector[1] = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return vector


def item(
    item_id: str,
    fused: float | None = 0.0,
    *,
    clip: float | None = None,
    text: float | None = None,
    tenant: str = TENANT,
    title: str = "",
    attributes: Mapping[str, Any] | None = None,
) -> StoredItem:
    """An item whose channels point at the given angles; ``None`` leaves a channel out."""
    vectors = {
        name: at(angle, SCHEMA.dense[name])
        for name, angle in (("fused", fused), ("clip", clip), ("text", text))
        if angle is not None
    }
    record = ItemRecord(
        id=item_id, tenant=tenant, title=title or f"title of {item_id}",
        attributes=dict(attributes or {}),
    )
    return StoredItem(record=record, vectors=vectors)


def ids(hits: list[Any]) -> list[str]:
    """Item ids of search hits or records, in order."""
    return [getattr(hit, "record", hit).id for hit in hits]


@dataclass
class Backend:
    """Opens stores of one kind on the same underlying data, so tests can reopen."""

    kind: str
    factory: Callable[[VectorSchema], VectorStore]
    opened: list[VectorStore] = field(default_factory=list)

    def open(self, schema: VectorSchema = SCHEMA) -> VectorStore:
        """A store on this backend's data (closed at teardown if the test does not)."""
        store = self.factory(schema)
        self.opened.append(store)
        return store


@pytest.fixture(params=["edge", "server", "server-url"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn; ``server-url`` only when QDRANT_URL names a server."""
    kind: str = request.param
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if kind == "edge":
        backend = Backend(kind, lambda schema: EdgeStore(tmp_path / "data", schema))
    elif kind == "server":
        client = QdrantClient(":memory:")
        backend = Backend(kind, lambda schema: ServerStore(client, schema, collection="contract"))
        cleanup = client.close
    else:
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip("QDRANT_URL is not set")
        collection = f"mmrec_contract_{uuid.uuid4().hex[:10]}"
        backend = Backend(kind, lambda schema: ServerStore(url, schema, collection=collection))

        def cleanup() -> None:
            admin = QdrantClient(url=url, prefer_grpc=True)
            admin.delete_collection(collection)
            admin.close()

    yield backend
    for store in backend.opened:
        store.close()
    cleanup()


@pytest.fixture
def store(backend: Backend) -> VectorStore:
    """A fresh, empty store on the current backend."""
    return backend.open()


# -- the contract, on every backend -----------------------------------------------------------


def test_search_ranks_by_cosine_best_first(store: VectorStore) -> None:
    angles = {"a": 10.0, "b": 30.0, "c": 50.0, "d": 70.0, "e": 100.0}
    store.upsert([item(name, angle) for name, angle in reversed(angles.items())])

    hits = store.search(at(0), using="fused", limit=3, tenant=TENANT)
    assert ids(hits) == ["a", "b", "c"]
    for hit in hits:
        assert hit.score == pytest.approx(math.cos(math.radians(angles[hit.record.id])), abs=1e-4)

    everything = store.search(at(0), using="fused", limit=10, tenant=TENANT)
    assert ids(everything) == ["a", "b", "c", "d", "e"]
    assert everything[-1].score < 0


def test_records_round_trip_through_the_payload(store: VectorStore) -> None:
    record = ItemRecord(
        id="sku-1", tenant=TENANT, title="Ünïcode title", text="a long body",
        image_uri="file:///images/sku-1.png",
        attributes={"genres": ["drama", "war"], "year": 1999, "price": 9.5, "meta": {"new": True}},
    )
    store.upsert([StoredItem(record=record, vectors={"fused": at(0)})])

    assert store.get(["sku-1"], tenant=TENANT) == [record]
    (hit,) = store.search(at(0), using="fused", limit=5, tenant=TENANT)
    assert hit.record == record


def test_tenants_are_isolated(store: VectorStore) -> None:
    store.upsert([
        item("shared", 0.0, tenant="shop-a", title="A's item"),
        item("only-a", 20.0, tenant="shop-a"),
        item("shared", 0.0, tenant="shop-b", title="B's item"),
    ])

    hits_a = store.search(at(0), using="fused", limit=10, tenant="shop-a")
    assert ids(hits_a) == ["shared", "only-a"]
    assert hits_a[0].record.title == "A's item"
    hits_b = store.search(at(0), using="fused", limit=10, tenant="shop-b")
    assert [(h.record.id, h.record.title) for h in hits_b] == [("shared", "B's item")]
    assert store.search(at(0), using="fused", limit=10, tenant="shop-c") == []

    assert store.delete(["shared"], tenant="shop-a") == 1
    assert store.get(["shared"], tenant="shop-a") == []
    assert [r.title for r in store.get(["shared"], tenant="shop-b")] == ["B's item"]


def test_upserting_again_replaces_the_point(store: VectorStore) -> None:
    store.upsert([item("x", 0.0, clip=0.0, title="old"), item("y", 40.0)])
    store.upsert([item("x", 80.0, title="new")])  # no clip vector this time

    assert store.count(TENANT) == 2
    assert [r.title for r in store.get(["x"], tenant=TENANT)] == ["new"]
    assert ids(store.search(at(0), using="fused", limit=5, tenant=TENANT)) == ["y", "x"]
    assert store.search(at(0, 4), using="clip", limit=5, tenant=TENANT) == []


def test_get_keeps_the_asked_order_and_skips_unknown_ids(store: VectorStore) -> None:
    store.upsert([item("a"), item("b"), item("c")])

    records = store.get(["c", "missing", "a", "c", "b"], tenant=TENANT)
    assert ids(records) == ["c", "a", "b"]
    assert store.get([], tenant=TENANT) == []
    assert store.get(["a"], tenant="other-shop") == []


def test_delete_counts_only_points_that_existed(store: VectorStore) -> None:
    store.upsert([item("a"), item("b"), item("c")])

    assert store.delete(["a", "missing", "a"], tenant=TENANT) == 1
    assert store.delete(["a"], tenant=TENANT) == 0
    assert store.delete(["b"], tenant="other-shop") == 0
    assert store.delete([], tenant=TENANT) == 0
    assert ids(store.get(["a", "b", "c"], tenant=TENANT)) == ["b", "c"]
    assert ids(store.search(at(0), using="fused", limit=5, tenant=TENANT)) != []
    assert store.count() == 2


def test_count_all_and_per_tenant(store: VectorStore) -> None:
    assert store.count() == 0
    store.upsert([item(f"a{i}", tenant="t1") for i in range(3)])
    store.upsert([item(f"b{i}", tenant="t2") for i in range(2)])

    assert store.count() == 5
    assert store.count("t1") == 3
    assert store.count("t2") == 2
    assert store.count("nobody") == 0


def test_an_item_without_a_channel_is_not_found_on_it(store: VectorStore) -> None:
    store.upsert([item("noclip", 0.0, text=0.0), item("withclip", 20.0, clip=0.0, text=30.0)])

    assert ids(store.search(at(0, 4), using="clip", limit=5, tenant=TENANT)) == ["withclip"]
    assert ids(store.search(at(0), using="fused", limit=5, tenant=TENANT)) == [
        "noclip", "withclip"
    ]
    assert ids(store.search(at(0, 6), using="text", limit=5, tenant=TENANT)) == [
        "noclip", "withclip"
    ]


@pytest.mark.parametrize(
    "vectors",
    [
        pytest.param({"fused": np.ones(7)}, id="wrong-size"),
        pytest.param({"colour": np.ones(4)}, id="unknown-name"),
        pytest.param({"fused": np.full(8, np.nan)}, id="nan"),
        pytest.param({"fused": np.zeros(8)}, id="all-zero"),
        pytest.param({"fused": np.ones((2, 4))}, id="two-dimensional"),
    ],
)
def test_bad_vectors_are_rejected_and_nothing_is_written(
    store: VectorStore, vectors: dict[str, np.ndarray]
) -> None:
    bad = StoredItem(record=ItemRecord(id="bad", tenant=TENANT), vectors=vectors)
    with pytest.raises(InvalidInput):
        store.upsert([item("good"), bad])
    assert store.count() == 0


def test_attributes_must_be_json(store: VectorStore) -> None:
    with pytest.raises(InvalidInput, match="JSON"):
        store.upsert([item("a", attributes={"when": object()})])
    assert store.count() == 0


def test_bad_searches_are_rejected(store: VectorStore) -> None:
    store.upsert([item("a")])
    with pytest.raises(InvalidInput, match="colour"):
        store.search(at(0), using="colour", limit=5, tenant=TENANT)
    with pytest.raises(InvalidInput):
        store.search(at(0, 5), using="fused", limit=5, tenant=TENANT)
    with pytest.raises(InvalidInput):
        store.search(at(0), using="fused", limit=0, tenant=TENANT)


def test_reopening_keeps_the_data(backend: Backend) -> None:
    first = backend.open()
    first.upsert([item("a", 0.0, clip=0.0), item("b", 30.0)])
    first.flush()
    first.close()

    with backend.open() as again:
        assert again.count(TENANT) == 2
        assert ids(again.search(at(0), using="fused", limit=5, tenant=TENANT)) == ["a", "b"]
        assert ids(again.search(at(0, 4), using="clip", limit=5, tenant=TENANT)) == ["a"]


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        pytest.param(VectorSchema({"fused": 8, "clip": 5, "text": 6}), "'clip' has size 4",
                     id="size"),
        pytest.param(VectorSchema({"fused": 8, "text": 6}), "'clip' (size 4) not in the config",
                     id="dropped"),
        pytest.param(VectorSchema({"fused": 8, "clip": 4, "text": 6, "behaviour": 32}),
                     "'behaviour' (size 32) is missing", id="added"),
    ],
)
def test_reopening_with_another_schema_fails(
    backend: Backend, other: VectorSchema, expected: str
) -> None:
    backend.open().close()
    with pytest.raises(SchemaMismatch, match="Re-index") as raised:
        backend.open(other)
    assert expected in str(raised.value)


def test_close_is_idempotent_and_calls_after_it_fail(backend: Backend) -> None:
    with backend.open() as store:
        store.upsert([item("a")])
        assert store.description
    store.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        store.upsert([item("b")])
    with pytest.raises(FailedPrecondition, match="closed"):
        store.count()


def test_open_store_picks_the_backend_from_the_settings(tmp_path: Path) -> None:
    with open_store(StoreSettings(data_dir=tmp_path / "data"), SCHEMA) as store:
        assert isinstance(store, EdgeStore)
        assert store.description.startswith("qdrant-edge 0.9.0 shard at ")
        assert str(tmp_path / "data") in store.description
    # A URL means a server; none listens on this port, so opening it is Unavailable.
    with pytest.raises(Unavailable, match="qdrant server"):
        open_store(StoreSettings(url="http://127.0.0.1:9", collection="c"), SCHEMA)


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


# -- EdgeStore only: the data-dir lock ---------------------------------------------------------


def test_a_second_edge_store_on_the_same_dir_is_refused(tmp_path: Path) -> None:
    with EdgeStore(tmp_path, SCHEMA) as first:
        first.upsert([item("a")])
        with pytest.raises(FailedPrecondition, match="in use by another mmrec process"):
            EdgeStore(tmp_path, SCHEMA)
        assert first.count() == 1  # the refused open did not disturb the owner
    with EdgeStore(tmp_path, SCHEMA) as second:
        assert second.count() == 1


def test_another_process_is_refused_the_data_dir(tmp_path: Path) -> None:
    probe = (
        "import sys; from pathlib import Path\n"
        "from engine.errors import FailedPrecondition\n"
        "from engine.store import EdgeStore, VectorSchema\n"
        "try:\n"
        f"    EdgeStore(Path(sys.argv[1]), VectorSchema({dict(SCHEMA.dense)!r}))\n"
        "except FailedPrecondition as exc:\n"
        "    print(exc); sys.exit(7)\n"
    )
    with EdgeStore(tmp_path, SCHEMA):
        result = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60,
        )
    assert result.returncode == 7, result.stderr
    assert f"pid {os.getpid()}" in result.stdout


# -- EdgeStore only: the background index build ------------------------------------------------


def slow_child(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    """Make the optimizing child start ``delay`` seconds late, so a build surely spans writes."""
    real = edge_rebuild.child_command
    wrapper = (
        f"import subprocess, sys, time; time.sleep({delay}); "
        "sys.exit(subprocess.call(sys.argv[1:]))"
    )

    def command(shard_dir: Path) -> list[str]:
        return [sys.executable, "-c", wrapper, *real(shard_dir)]

    monkeypatch.setattr(edge_rebuild, "child_command", command)


def fill(store: EdgeStore, count: int, seed: int = 0) -> None:
    """``count`` items ``p0..`` with random vectors on every channel."""
    rng = np.random.default_rng(seed)
    store.upsert([
        StoredItem(
            ItemRecord(id=f"p{i}", tenant=TENANT),
            {name: rng.standard_normal(size) for name, size in SCHEMA.dense.items()},
        )
        for i in range(count)
    ])


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until ``condition`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_optimize_builds_in_the_background_and_keeps_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_child(monkeypatch, delay=1.0)
    store = EdgeStore(tmp_path, SCHEMA, indexing_threshold_kb=16)
    fill(store, 3000)
    before = store.shard_path
    assert store.info()["indexed_vectors"] == 0

    store.optimize()
    wait_for(lambda: (tmp_path / "shard-000002").exists())
    answered, slowest, written, deleted = 0, 0.0, [], []
    while store.optimizing:
        started = time.monotonic()
        assert len(store.search(at(0), using="fused", limit=5, tenant=TENANT)) == 5
        slowest = max(slowest, time.monotonic() - started)
        answered += 1
        if len(written) < 200:  # writes during the build: new items, deletes, replacements
            n = len(written)
            store.upsert([item(f"new{n}", 90.0 + n % 45), item(f"p{n}", 0.0, title="changed")])
            written.append(f"new{n}")
            if n % 2 == 0:
                deleted.append(f"p{1000 + n}")
                assert store.delete([deleted[-1]], tenant=TENANT) == 1
        time.sleep(0.002)

    assert answered >= 20 and slowest < 2.0
    assert len(written) >= 20  # the 1 s head start of the child guarantees a replay
    assert store.shard_path != before and not before.exists()
    assert store.info()["indexed_vectors"] > 0
    assert store.count(TENANT) == 3000 + len(written) - len(deleted)
    assert ids(store.get(written, tenant=TENANT)) == written
    assert store.get(deleted, tenant=TENANT) == []
    changed = store.get([f"p{n}" for n in range(len(written))], tenant=TENANT)
    assert {record.title for record in changed} == {"changed"}
    store.close()

    with EdgeStore(tmp_path, SCHEMA) as reopened:  # the replayed writes are durable
        assert reopened.shard_path.name == "shard-000002"
        assert reopened.count(TENANT) == 3000 + len(written) - len(deleted)
        assert reopened.get(deleted[-1:], tenant=TENANT) == []


def test_concurrent_calls_from_a_thread_pool_during_a_build(tmp_path: Path) -> None:
    with EdgeStore(tmp_path, SCHEMA, indexing_threshold_kb=16) as store:
        fill(store, 1000)
        store.optimize()

        def worker(w: int) -> int:
            found = 0
            for n in range(60):
                store.upsert([item(f"w{w}-{n}", float(n))])
                found += len(store.search(at(0), using="fused", limit=3, tenant=TENANT))
                found += len(store.get([f"w{w}-{n}", f"p{n}"], tenant=TENANT))
                if n % 3 == 0:
                    assert store.delete([f"w{w}-{n}"], tenant=TENANT) == 1
            return found

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(worker, range(4)))
        store.optimize(wait=True)

        assert results == [60 * 3 + 60 * 2] * 4
        assert store.count(TENANT) == 1000 + 4 * 40
        assert [p.name for p in tmp_path.glob("shard-*")] == [store.shard_path.name]
        assert store.shard_path.name != "shard-000001"


def test_a_failed_build_is_logged_and_the_current_shard_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        edge_rebuild, "child_command",
        lambda shard_dir: [sys.executable, "-c", "import time, sys; time.sleep(0.5); sys.exit(3)"],
    )
    with EdgeStore(tmp_path, SCHEMA) as store:
        fill(store, 100)
        before = store.shard_path
        store.optimize()
        wait_for(lambda: (tmp_path / "shard-000002").exists())
        store.upsert([item("during")])
        store.optimize(wait=True)

        assert "index build failed" in caplog.text and "exited with code 3" in caplog.text
        assert store.shard_path == before
        assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-000001"]
        assert store.count() == 101
        assert ids(store.get(["during"], tenant=TENANT)) == ["during"]


def test_closing_during_a_build_cancels_it_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_child(monkeypatch, delay=30.0)
    store = EdgeStore(tmp_path, SCHEMA)
    fill(store, 100)
    store.optimize()
    wait_for(lambda: (tmp_path / "shard-000002").exists())
    store.upsert([item("during")])

    started = time.monotonic()
    store.close()
    assert time.monotonic() - started < 5.0
    with pytest.raises(FailedPrecondition):
        store.optimize()
    with EdgeStore(tmp_path, SCHEMA) as reopened:
        assert reopened.shard_path.name == "shard-000001"
        assert reopened.count() == 101
        assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-000001"]


def test_reopening_after_a_crash_mid_build_uses_the_pointer_and_cleans_up(tmp_path: Path) -> None:
    with EdgeStore(tmp_path, SCHEMA) as store:
        store.upsert([item("a"), item("b", 30.0)])
    # What a crash between copy and swap leaves: an unfinished copy, a half-written manifest.
    edge_rebuild.copy_shard(tmp_path / "shard-000001", tmp_path / "shard-000002")
    (tmp_path / "manifest.json.tmp").write_text("{ half", encoding="utf-8")

    with EdgeStore(tmp_path, SCHEMA) as store:
        assert store.shard_path.name == "shard-000001"
        assert ids(store.search(at(0), using="fused", limit=5, tenant=TENANT)) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "manifest.json", "shard-000001"]


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
