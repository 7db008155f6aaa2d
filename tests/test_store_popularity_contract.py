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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_edge import EdgeShard, UpdateOperation

from engine.domain import (
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
