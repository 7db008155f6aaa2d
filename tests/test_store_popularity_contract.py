"""The VectorStore contract, popularity part: add_popularity, popular(), and popularity
surviving re-indexing and EdgeStore's background index build.

Popularity is a payload field beside the record (never an attribute): it grows
by ``add_popularity`` (a read-modify-write under the store's lock), is carried
over when an item is upserted again, and ranks ``popular()`` by Qdrant's
``order_by`` on a float index, ties in point id order on every backend.
Backends and helpers in tests/store_fixtures.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_edge import EdgeShard, UpdateOperation

from engine.domain import (
    ChannelHit,
    ChannelQuery,
    HybridQuery,
    InvalidInput,
    ItemFilter,
    ItemRecord,
    Match,
    MatchAny,
    StoredItem,
    point_id,
)
from engine.store import EdgeStore, ServerStore, VectorStore
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
    slow_child,
    wait_for,
)

pytestmark = QDRANT_WARNINGS
EVERYTHING = ItemFilter()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn; ``server-url`` only when QDRANT_URL names a server."""
    yield from open_backend(request.param, tmp_path)


@pytest.fixture
def store(backend: Backend) -> VectorStore:
    """A fresh, empty store on the current backend."""
    return backend.open()


def scored(store: VectorStore, tenant: str = TENANT, item_filter: ItemFilter = EVERYTHING,
           limit: int = 50) -> list[tuple[str, float]]:
    """(id, popularity) of ``popular()``, most popular first."""
    return [(h.record.id, h.score) for h in store.popular(
        tenant=tenant, filter=item_filter, limit=limit
    )]


def test_add_popularity_accumulates_and_skips_unknown_items(store: VectorStore) -> None:
    store.upsert([item("a"), item("b", 10.0), item("c", 20.0)])

    assert store.add_popularity({"a": 1.0, "b": 2.5, "ghost": 4.0}, tenant=TENANT) == 2
    assert store.add_popularity({"a": 2, "b": -0.5}, tenant=TENANT) == 2
    assert store.add_popularity({"a": 1.0}, tenant="other-shop") == 0
    assert store.add_popularity({}, tenant=TENANT) == 0

    assert scored(store) == [("a", 3.0), ("b", 2.0)]  # c never had any: not listed
    assert store.count() == 3 and store.get(["ghost"], tenant=TENANT) == []


def test_popularity_is_not_part_of_the_record(store: VectorStore) -> None:
    record = ItemRecord(id="a", tenant=TENANT, title="A", attributes={"year": 1999})
    store.upsert([StoredItem(record, {"fused": at(0)})])
    store.add_popularity({"a": 7.0}, tenant=TENANT)

    assert store.get(["a"], tenant=TENANT) == [record]
    (hit,) = store.search(at(0), using="fused", limit=3, tenant=TENANT)
    (popular,) = store.popular(tenant=TENANT, filter=EVERYTHING, limit=3)
    assert hit.record == popular.record == record
    assert popular.score == 7.0
    # an attribute named popularity is the item's own, not the store's
    assert store.popular(
        tenant=TENANT, filter=ItemFilter(must=(Match("popularity", 7),)), limit=3
    ) == []


def test_upserting_again_keeps_popularity(store: VectorStore) -> None:
    store.upsert([item("a"), item("b", 10.0)])
    store.add_popularity({"a": 5.0, "b": 1.0}, tenant=TENANT)

    store.upsert([item("a", 40.0, title="new"), item("b", 10.0), item("c", 20.0)])  # re-index
    store.upsert([item("a", 40.0, title="newer")])

    assert scored(store) == [("a", 5.0), ("b", 1.0)]
    assert store.popular(tenant=TENANT, filter=EVERYTHING, limit=1)[0].record.title == "newer"
    assert store.add_popularity({"a": 1.0, "c": 2.0}, tenant=TENANT) == 2
    assert scored(store) == [("a", 6.0), ("c", 2.0), ("b", 1.0)]
    store.delete(["a"], tenant=TENANT)  # a deleted item's popularity goes with it
    store.upsert([item("a")])
    assert scored(store) == [("c", 2.0), ("b", 1.0)]


def test_popular_ranks_within_the_tenant_and_the_filter(store: VectorStore) -> None:
    kinds = {"a": "film", "b": "series", "c": "film", "d": "film", "e": "series"}
    store.upsert([item(key, attributes={"kind": kind}) for key, kind in kinds.items()])
    store.upsert([item(key, tenant="other") for key in ("a", "x")])
    store.add_popularity({"a": 2.0, "b": 9.0, "c": 4.0, "d": 1.0, "e": 3.0}, tenant=TENANT)
    store.add_popularity({"a": 100.0, "x": 50.0}, tenant="other")

    assert scored(store) == [("b", 9.0), ("c", 4.0), ("e", 3.0), ("a", 2.0), ("d", 1.0)]
    films = ItemFilter(must=(Match("kind", "film"),))
    assert scored(store, item_filter=films) == [("c", 4.0), ("a", 2.0), ("d", 1.0)]
    assert scored(store, item_filter=films, limit=2) == [("c", 4.0), ("a", 2.0)]
    assert scored(store, item_filter=ItemFilter(exclude_ids=("b", "c"))) == [
        ("e", 3.0), ("a", 2.0), ("d", 1.0)
    ]
    assert scored(store, item_filter=ItemFilter(must_not=(MatchAny("kind", ("film",)),))) == [
        ("b", 9.0), ("e", 3.0)
    ]
    assert scored(store, tenant="other") == [("a", 100.0), ("x", 50.0)]
    assert scored(store, tenant="nobody") == []


def test_equal_popularity_is_ordered_by_point_id_whatever_the_limit(store: VectorStore) -> None:
    keys = [f"t{n}" for n in range(10)]
    store.upsert([item(key) for key in [*keys, "top", "next"]])
    store.add_popularity({key: 1.0 for key in keys} | {"top": 3.0, "next": 2.0}, tenant=TENANT)

    full = scored(store)
    tied = sorted(keys, key=lambda key: point_id(TENANT, key))
    assert full == [("top", 3.0), ("next", 2.0), *((key, 1.0) for key in tied)]
    for limit in range(1, 13):
        assert scored(store, limit=limit) == full[:limit]
    odd = ItemFilter(exclude_ids=tuple(keys[::2]))
    assert scored(store, item_filter=odd, limit=4) == [
        ("top", 3.0), ("next", 2.0), *((key, 1.0) for key in tied if key not in keys[::2])
    ][:4]


@pytest.mark.parametrize(
    "increments",
    [
        pytest.param({"a": 1.0, "b": float("nan")}, id="nan"),
        pytest.param({"a": 1.0, "b": float("inf")}, id="inf"),
        pytest.param({"a": "1"}, id="string"),
        pytest.param({"a": True}, id="bool"),
        pytest.param({"": 1.0}, id="empty-id"),
    ],
)
def test_bad_increments_are_rejected_and_nothing_is_written(
    store: VectorStore, increments: dict[str, object]
) -> None:
    store.upsert([item("a"), item("b")])
    with pytest.raises(InvalidInput):
        store.add_popularity(increments, tenant=TENANT)  # type: ignore[arg-type]
    assert scored(store) == []


def test_bad_popular_calls_are_rejected(store: VectorStore) -> None:
    with pytest.raises(InvalidInput, match="limit"):
        store.popular(tenant=TENANT, filter=EVERYTHING, limit=0)
    with pytest.raises(InvalidInput, match="attribute name"):
        store.popular(tenant=TENANT, filter=ItemFilter(must=(Match("a b", 1),)), limit=5)


def test_both_backends_agree_on_popularity(tmp_path: Path) -> None:
    client = QdrantClient(":memory:")
    edge = EdgeStore(tmp_path / "edge", SCHEMA)
    server = ServerStore(client, SCHEMA, collection="congruence")
    rng = np.random.default_rng(3)
    keys = [f"i{n:02d}" for n in range(30)]
    increments = [{key: float(rng.integers(0, 4)) for key in rng.choice(keys, 12)}
                  for _ in range(4)]
    filters = [EVERYTHING, ItemFilter(must=(Match("kind", "film"),)),
               ItemFilter(exclude_ids=tuple(keys[:5]), must_not=(Match("kind", "series"),))]
    try:
        for store in (edge, server):
            store.upsert([item(key, attributes={"kind": ("film", "series")[n % 2]})
                          for n, key in enumerate(keys)])
            for batch in increments:
                store.add_popularity(batch, tenant=TENANT)
        for item_filter in filters:
            for limit in (1, 3, 7, 40):
                assert scored(edge, item_filter=item_filter, limit=limit) == scored(
                    server, item_filter=item_filter, limit=limit)
    finally:
        edge.close()
        server.close()
        client.close()


# -- popularity fused into a hybrid query (HybridQuery.popularity_weight) ---------------------

# id: fused angle, text angle, popularity (None: never had any), kind. Towards 0 degrees the
# fused channel ranks a..h, the text channel b, c, a, d, e, h, g, f; "far" and "farther" are
# the most popular but match neither channel within its limit. Chosen so that no two items
# tie in any ranking the tests compute (tied items would take Qdrant's order).
MATCHES: dict[str, tuple[float, float, float | None, str]] = {
    "a": (2, 15, 1.0, "film"),
    "b": (6, 5, 5.0, "film"),
    "c": (10, 10, 0.0, "series"),
    "d": (14, 20, 9.0, "film"),
    "e": (18, 25, None, "series"),
    "f": (22, 40, 2.0, "film"),
    "g": (26, 35, 7.0, "film"),
    "h": (30, 30, 3.0, "series"),
    "far": (80, 85, 100.0, "film"),
    "farther": (85, 80, 50.0, "film"),
}
CHANNEL_LIMIT = 8
"""Each channel's candidates: a..h on both, never the far items."""


@pytest.fixture
def matches(store: VectorStore) -> VectorStore:
    """The store holding MATCHES (with their popularity), and a more popular tenant "other"
    whose items lie nearer the query than any of ours."""
    store.upsert([item(key, fused, text=text, attributes={"kind": kind})
                  for key, (fused, text, _, kind) in MATCHES.items()])
    store.add_popularity({key: pop for key, (_, _, pop, _) in MATCHES.items() if pop is not None},
                         tenant=TENANT)
    store.upsert([item(key, 0.5, text=0.5, tenant="other", attributes={"kind": "film"})
                  for key in ("a", "x")])
    store.add_popularity({"a": 1000.0, "x": 500.0}, tenant="other")
    return store


def context_channels(limit: int = CHANNEL_LIMIT, weights: tuple[float, float] = (1.0, 0.6),
                     names: tuple[str, ...] = ("fused", "text")) -> list[ChannelQuery]:
    """Fused and text channels towards 0 degrees (the text channel at weight 0.6, so no two
    items tie in the fusion)."""
    vectors = {"fused": at(0), "text": at(0, 6)}
    return [ChannelQuery(name, vectors[name], limit, weight)
            for name, weight in zip(names, weights, strict=False)]


def popularity_fused(
    query: HybridQuery, keys: Sequence[str] = tuple(MATCHES)
) -> list[tuple[str, float, int | None]]:
    """The answer computed by hand: (id, fused score, popularity rank), best first.

    A: the channels' RRF of the items in ``keys`` (those passing the filter), top
    ``max(limit, largest channel limit)``; B: A ordered by popularity, items without one
    left out; the answer: 1 / (k - 1 + rank_A) + 1 / (k - 1 + rank_B / weight)."""
    k, weight = query.rrf_k, query.popularity_weight
    angles = {key: {"fused": fused, "text": text} for key, (fused, text, _, _) in MATCHES.items()}
    rankings = [
        sorted(keys, key=lambda key: angles[key][channel.using])[:channel.limit]
        for channel in query.channels
    ]
    if len(query.channels) == 1:  # no fusion: the channel's own ranking, all of it
        a = rankings[0]
    else:
        score: dict[str, float] = {}
        for channel, ranking in zip(query.channels, rankings, strict=True):
            for rank, key in enumerate(ranking, start=1):
                score[key] = score.get(key, 0.0) + 1 / (k - 1 + rank / channel.weight)
        assert len(set(score.values())) == len(score), "ties in A: the order would be Qdrant's"
        candidates = max(query.limit, *(channel.limit for channel in query.channels))
        a = sorted(score, key=lambda key: -score[key])[:candidates]
    popularity = {key: value for key in a if (value := MATCHES[key][2]) is not None}
    b_rank = {key: rank for rank, key in enumerate(
        sorted(popularity, key=lambda key: -popularity[key]), start=1)}
    fused = {key: 1 / (k - 1 + rank) + (1 / (k - 1 + b_rank[key] / weight) if key in b_rank
                                        else 0.0)
             for rank, key in enumerate(a, start=1)}
    assert len({round(s, 9) for s in fused.values()}) == len(fused), "ties in the answer"
    order = sorted(fused, key=lambda key: -fused[key])[:query.limit]
    return [(key, fused[key], b_rank.get(key)) for key in order]


def popularity_query(**change: Any) -> HybridQuery:
    """The cold start's query: the context channels, popularity at weight 1, k = 10."""
    options: dict[str, Any] = {"channels": context_channels(), "limit": 6, "tenant": TENANT,
                               "rrf_k": 10, "popularity_weight": 1.0, **change}
    return HybridQuery(**options)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({}, id="weight-1"),
        pytest.param({"popularity_weight": 3.0, "rrf_k": 2}, id="weight-3-k-2"),
        pytest.param({"popularity_weight": 0.25, "limit": 8}, id="weight-quarter"),
        pytest.param({"limit": 3}, id="limit-3"),
        pytest.param({"channels": context_channels(3), "limit": 4}, id="candidates-cut"),
        pytest.param({"channels": context_channels(5, names=("text",)), "limit": 4},
                     id="one-channel"),
        pytest.param({"channels": context_channels(weights=(1.0, 3.0)), "rrf_k": 60},
                     id="channel-weights"),
    ],
)
def test_popularity_fused_order_is_the_hand_computed_rrf(
    matches: VectorStore, change: dict[str, Any]
) -> None:
    query = popularity_query(**change)
    expected = popularity_fused(query)
    hits = matches.hybrid_search(query)

    assert [(h.record.id, h.score) for h in hits] == [
        (key, pytest.approx(score, rel=1e-5)) for key, score, _ in expected
    ]
    assert {h.record.tenant for h in hits} == {TENANT}


def test_popularity_lifts_popular_matches_and_never_brings_in_others(
    matches: VectorStore,
) -> None:
    plain = matches.hybrid_search(popularity_query(popularity_weight=0.0, limit=10))
    popular = matches.hybrid_search(popularity_query(limit=10))

    # popularity lifts d (9.0, the most popular) and g (7.0), and drops e (it has none)
    assert ids(plain) == ["b", "a", "c", "d", "e", "h", "f", "g"]
    assert ids(popular) == ["b", "d", "a", "g", "c", "h", "f", "e"]
    assert ids(popular) == [key for key, _, _ in popularity_fused(popularity_query(limit=10))]
    # far and farther are the most popular items of the tenant, "other"'s even more so, and
    # nearer: neither is a match, so neither comes in
    assert set(ids(popular)) == set(ids(plain)) == set("abcdefgh")


@pytest.mark.parametrize(
    ("item_filter", "channel_limit"),
    [
        pytest.param(ItemFilter(must=(Match("kind", "film"),)), 3, id="films"),
        pytest.param(ItemFilter(exclude_ids=("b", "e")), 5, id="exclude-ids"),
        pytest.param(ItemFilter(must_not=(Match("kind", "film"),)), 5, id="series"),
    ],
)
def test_popularity_fused_stays_within_the_filter_and_the_tenant(
    matches: VectorStore, item_filter: ItemFilter, channel_limit: int
) -> None:
    passing = [key for key, (_, _, _, kind) in MATCHES.items()
               if key not in item_filter.exclude_ids
               and all(kind == c.value for c in item_filter.must if isinstance(c, Match))
               and all(kind != c.value for c in item_filter.must_not if isinstance(c, Match))]
    # few candidates a channel: even filtered, far and farther stay out of both channels
    query = popularity_query(channels=context_channels(channel_limit), filter=item_filter,
                             limit=10)
    hits = matches.hybrid_search(query)

    assert ids(hits) == [key for key, _, _ in popularity_fused(query, passing)]
    assert set(ids(hits)) <= set(passing) - {"far", "farther"}
    assert {h.record.tenant for h in hits} == {TENANT}
    other = matches.hybrid_search(popularity_query(tenant="other"))
    assert ids(other) == ["a", "x"]  # equal on both channels: the more popular one first


def test_popularity_comes_as_a_channel_with_its_rank_and_value(matches: VectorStore) -> None:
    query = popularity_query(limit=10, with_channel_hits=True)
    hits = matches.hybrid_search(query)

    assert ids(hits) == ids(matches.hybrid_search(replace(query, with_channel_hits=False)))
    expected = {key: rank for key, _, rank in popularity_fused(query) if rank is not None}
    fused_rank = {key: rank for rank, key in enumerate("abcdefgh", start=1)}
    text_rank = {key: rank for rank, key in enumerate("bcadehgf", start=1)}
    for hit in hits:
        key = hit.record.id
        assert hit.channels["fused"].rank == fused_rank[key]
        assert hit.channels["text"].rank == text_rank[key]
        popularity = MATCHES[key][2]
        if popularity is None:  # e never had popularity: not in that ranking
            assert set(hit.channels) == {"fused", "text"}
        else:
            assert hit.channels["popularity"] == ChannelHit(expected[key], popularity)
    assert hits[0].channels["popularity"] == ChannelHit(3, 5.0)  # b, after d (9.0) and g (7.0)
    assert hits[-1].record.id == "e"


def test_popularity_weight_zero_is_the_plain_hybrid_query(matches: VectorStore) -> None:
    for channels in (context_channels(), context_channels(names=("fused",))):
        query = popularity_query(channels=channels, popularity_weight=0.0, with_channel_hits=True)
        plain = HybridQuery(channels, limit=6, tenant=TENANT, rrf_k=10, with_channel_hits=True)
        assert matches.hybrid_search(query) == matches.hybrid_search(plain)


@pytest.mark.parametrize(
    ("weight", "message"),
    [(-1.0, "popularity_weight"), (float("nan"), "popularity_weight"),
     (float("inf"), "popularity_weight"), (True, "popularity_weight"), ("1", "popularity_weight")],
)
def test_bad_popularity_weights_are_rejected(
    matches: VectorStore, weight: object, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        matches.hybrid_search(popularity_query(popularity_weight=weight))


def test_both_backends_agree_on_popularity_fused_queries(tmp_path: Path) -> None:
    """Same ids, fused scores (f32 on qdrant-edge) and channel standings, also with DBSF
    fusing the channels; popularity values are distinct (Qdrant orders ties as it likes)."""
    client = QdrantClient(":memory:")
    edge = EdgeStore(tmp_path / "edge", SCHEMA)
    server = ServerStore(client, SCHEMA, collection="popularity-fused")
    rng = np.random.default_rng(5)
    keys = [f"i{n:02d}" for n in range(40)]
    angles = {key: (float(rng.uniform(0, 90)), float(rng.uniform(0, 90))) for key in keys}
    values = rng.permutation(len(keys)).astype(float)  # distinct: no ties in order_by
    try:
        for store in (edge, server):
            store.upsert([item(key, fused, text=text) for key, (fused, text) in angles.items()])
            store.add_popularity({key: values[n] for n, key in enumerate(keys) if n % 5},
                                 tenant=TENANT)
        change: dict[str, Any]
        for change in ({}, {"fusion": "dbsf"}, {"popularity_weight": 2.0, "limit": 12},
                       {"channels": context_channels(10, names=("fused",))},
                       {"filter": ItemFilter(exclude_ids=tuple(keys[::3]))}):
            # text at weight 0.63: no rank on one channel ties with a rank on the other
            query = popularity_query(**{"channels": context_channels(weights=(1.0, 0.63)),
                                        "with_channel_hits": True, **change})
            want, got = edge.hybrid_search(query), server.hybrid_search(query)
            assert ids(got) == ids(want), change
            assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-5)
            assert [{n: c.rank for n, c in h.channels.items()} for h in got] == [
                {n: c.rank for n, c in h.channels.items()} for h in want
            ]
            assert [h.channels.get("popularity") for h in got] == [
                h.channels.get("popularity") for h in want
            ]
    finally:
        edge.close()
        server.close()
        client.close()


# -- EdgeStore only: popularity across index builds and old shards ---------------------------------


def test_popularity_and_vectors_written_during_a_build_survive_the_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_child(monkeypatch, delay=1.0)
    store = EdgeStore(tmp_path, SCHEMA, indexing_threshold_kb=16)
    store.upsert([item(f"p{n}", float(n % 90), clip=0.0) for n in range(300)])
    store.add_popularity({"p0": 10.0}, tenant=TENANT)

    store.optimize()
    wait_for(lambda: (tmp_path / "shard-000002").exists())
    written = 0
    while store.optimizing:
        if written < 200:  # during the build: popularity, vectors, a re-index of p0
            written += 1
            assert store.add_popularity({f"p{written}": 1.0, "p0": 1.0}, tenant=TENANT) == 2
            assert store.set_vectors({f"p{written}": at(90, 4)}, tenant=TENANT, using="clip") == 1
            store.upsert([item("p0", 5.0, clip=0.0, title=f"re-indexed {written}")])
        time.sleep(0.005)
    assert written >= 10  # the child's 1 s head start guarantees writes to replay
    assert store.shard_path.name == "shard-000002"

    def check(current: EdgeStore) -> None:
        top = current.popular(tenant=TENANT, filter=EVERYTHING, limit=written + 5)
        assert (top[0].record.id, top[0].score) == ("p0", 10.0 + written)
        assert top[0].record.title == f"re-indexed {written}"
        assert sorted(h.record.id for h in top[1:]) == sorted(
            f"p{n}" for n in range(1, written + 1)
        )
        assert {h.score for h in top[1:]} == {1.0}
        keys = [f"p{n}" for n in range(written + 2)]
        clip = current.vectors(keys, tenant=TENANT, using="clip")
        for n, key in enumerate(keys):  # p0 and the first untouched item keep 0 degrees
            want = at(90, 4) if 0 < n <= written else at(0, 4)
            np.testing.assert_allclose(clip[key], want, atol=1e-6)

    check(store)
    store.close()
    with EdgeStore(tmp_path, SCHEMA) as reopened:
        check(reopened)


def test_a_shard_from_before_the_popularity_index_gets_it_on_open(tmp_path: Path) -> None:
    with EdgeStore(tmp_path, SCHEMA) as store:
        store.upsert([item("a"), item("b")])
        path = store.shard_path
    shard = EdgeShard.load(str(path))  # what a shard made before popularity looked like
    shard.update(UpdateOperation.delete_field_index("popularity"))
    assert "popularity" not in shard.info().payload_schema
    shard.flush()
    shard.close()

    with EdgeStore(tmp_path, SCHEMA) as store:
        store.add_popularity({"a": 1.0, "b": 2.0}, tenant=TENANT)
        assert ids(store.popular(tenant=TENANT, filter=EVERYTHING, limit=5)) == ["b", "a"]
    shard = EdgeShard.load(str(path))
    assert "popularity" in shard.info().payload_schema
    shard.close()
