"""The VectorStore contract: the same calls give the same answers on every backend.

Backends: ``edge`` (EdgeStore in a temp dir), ``server`` (ServerStore on
``QdrantClient(":memory:")``) and ``server-url`` (a real Qdrant server, only when
``QDRANT_URL`` is set). Vectors are built in a plane (``at(degrees)``) so the
cosine order, and the scores, are known in advance. The edge-only tests at the
end cover the data-dir lock and the background index build (copy, child
process, replay, swap). Hybrid search, filters, the sparse channel and fusion
are in test_store_hybrid_contract.py; the shared pieces in tests/store_fixtures.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from engine.config import StoreSettings
from engine.domain import (
    FailedPrecondition,
    InvalidInput,
    ItemRecord,
    SchemaMismatch,
    StoredItem,
    Unavailable,
)
from engine.store import EdgeStore, VectorSchema, VectorStore, open_store
from engine.store.edge import rebuild as edge_rebuild
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

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn; ``server-url`` only when QDRANT_URL names a server."""
    yield from open_backend(request.param, tmp_path)


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
        "from engine.domain import FailedPrecondition\n"
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
