"""The UserStore contract: the same calls give the same answers on every backend.

Backends: ``edge`` (EdgeUserStore in DATA_DIR/users), ``server`` (ServerUserStore on
``QdrantClient(":memory:")``) and ``server-url`` (a real Qdrant server, only when
``QDRANT_URL`` is set). A user is one point: named vectors and an opaque JSON
payload; erasing it must leave nothing of it in the collection. The edge-only
tests at the end cover the folder lock, living beside the items' data dir, and
erasure on disk: after a delete no file in the users folder holds the user's bytes
(no qdrant WAL, a vacuumed segment, an emptied journal), also after a crash and
for a users shard made with a WAL by an earlier mmrec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_edge import (
    EdgeShard,
    ScrollRequest,
)

from engine.config import StoreSettings
from engine.domain import FailedPrecondition, InvalidInput, SchemaMismatch, Unavailable
from engine.store import (
    EdgeStore,
    EdgeUserStore,
    ServerUserStore,
    UserRecord,
    UserStore,
    open_user_store,
)
from engine.store.edge import users as edge_users
from engine.store.users import user_point_id
from tests.store_fixtures import QDRANT_WARNINGS, SCHEMA, TENANT, at, item

pytestmark = QDRANT_WARNINGS

REPO_ROOT = Path(__file__).resolve().parents[1]
DIMS = {"profile": 8, "behaviour": 4}


@dataclass
class Users:
    """Opens user stores of one backend on the same data, and reads that data raw."""

    kind: str
    factory: Callable[[Mapping[str, int]], UserStore]
    raw: Callable[[], list[dict[str, Any]]]
    """Every stored point's payload, read around the store (it must be closed for edge)."""
    opened: list[UserStore] = field(default_factory=list)

    def open(self, dims: Mapping[str, int] = DIMS) -> UserStore:
        """A store on this backend's data (closed at teardown if the test does not)."""
        store = self.factory(dims)
        self.opened.append(store)
        return store


def _raw_edge(folder: Path) -> list[dict[str, Any]]:
    """Every point's payload in the users shard, read with qdrant-edge directly."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    shard = EdgeShard.load(str(folder / manifest["current"]))
    try:
        points, _ = shard.scroll(ScrollRequest(limit=10_000, with_payload=True))
        return [dict(p.payload or {}) for p in points]
    finally:
        shard.close()


def _raw_server(client: QdrantClient, collection: str) -> list[dict[str, Any]]:
    """Every point's payload in the users collection, read with qdrant-client directly."""
    points, _ = client.scroll(collection, limit=10_000, with_payload=True)
    return [dict(p.payload or {}) for p in points]


@pytest.fixture(params=["edge", "server", "server-url"])
def users(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Users]:
    """Each backend in turn; ``server-url`` only when QDRANT_URL names a server."""
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if request.param == "edge":
        folder = tmp_path / "data" / "users"
        backend = Users("edge", lambda dims: EdgeUserStore(folder, dims),
                        lambda: _raw_edge(folder))
    elif request.param == "server":
        client = QdrantClient(":memory:")
        backend = Users("server", lambda dims: ServerUserStore(client, dims, collection="u"),
                        lambda: _raw_server(client, "u"))
        cleanup = client.close
    else:
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip("QDRANT_URL is not set")
        collection = f"mmrec_users_{uuid.uuid4().hex[:10]}"
        admin = QdrantClient(url=url, prefer_grpc=True)
        backend = Users("server-url",
                        lambda dims: ServerUserStore(url, dims, collection=collection),
                        lambda: _raw_server(admin, collection))

        def cleanup() -> None:
            admin.delete_collection(collection)
            admin.close()

    yield backend
    for store in backend.opened:
        store.close()
    cleanup()


@pytest.fixture
def store(users: Users) -> UserStore:
    """A fresh, empty user store on the current backend."""
    return users.open()


def user(user_id: str, tenant: str = TENANT, *, profile: float | None = 0.0,
         **payload: Any) -> UserRecord:
    """A user whose profile vector points at ``profile`` degrees (``None``: no vectors)."""
    vectors = {} if profile is None else {"profile": at(profile) * 3.0}
    return UserRecord(tenant=tenant, user_id=user_id, vectors=vectors,
                      payload=payload or {"events": [["i1", "click", 1.0, 17.5]], "seen": ["i1"]})


def same(got: UserRecord | None, want: UserRecord) -> None:
    """``got`` is ``want`` as stored: same keys and payload, vectors normalised."""
    assert got is not None
    assert (got.tenant, got.user_id, dict(got.payload)) == (want.tenant, want.user_id,
                                                            dict(want.payload))
    assert set(got.vectors) == set(want.vectors)
    for name, vector in want.vectors.items():
        assert got.vectors[name].dtype == np.float32
        np.testing.assert_allclose(got.vectors[name], vector / np.linalg.norm(vector), atol=1e-6)


# -- the contract, on every backend -----------------------------------------------------------


def test_many_users_in_one_call(store: UserStore) -> None:
    records = [user("a", profile=10.0), user("b", profile=None, note="x"), user("c")]
    store.put_many(records)
    store.put_many([])
    store.put(user("other", tenant="elsewhere"))
    found = store.get_many(["c", "zzz", "a", "b", "a", "other"], tenant=TENANT)
    assert sorted(found) == ["a", "b", "c"]              # unknown and other-tenant ids left out
    for record in records:
        same(found[record.user_id], record)
    assert store.get_many([], tenant=TENANT) == {}
    with pytest.raises(InvalidInput):                     # validated before any write
        store.put_many([user("d"), user("")])
    assert store.get("d", tenant=TENANT) is None


def test_a_user_round_trips(store: UserStore) -> None:
    record = UserRecord(
        tenant=TENANT, user_id="u-1",
        vectors={"profile": at(30) * 5.0, "behaviour": np.array([1.0, 2.0, 2.0, 0.0])},
        payload={"events": [["i1", "rate", 4.5, 1.7e9]], "seen": ["i1", "i2"], "norm": 2.5,
                 "nested": {"ünïcode": [1, None, True]}},
    )
    store.put(record)

    same(store.get("u-1", tenant=TENANT), record)
    assert store.get("u-2", tenant=TENANT) is None
    assert store.count() == 1 and store.count(TENANT) == 1


def test_put_replaces_the_whole_user(store: UserStore) -> None:
    store.put(user("u", profile=0.0, seen=["a"], extra=1))
    store.put(user("u", profile=None, seen=["b"]))  # no vectors this time

    got = store.get("u", tenant=TENANT)
    assert got is not None and dict(got.payload) == {"seen": ["b"]} and dict(got.vectors) == {}
    store.put(user("u", profile=90.0))
    same(store.get("u", tenant=TENANT), user("u", profile=90.0))
    assert store.count() == 1


def test_delete_erases_everything_of_the_user(users: Users) -> None:
    store = users.open()
    store.put(user("gone", seen=["secret-item"]))
    store.put(user("kept"))

    assert store.delete("gone", tenant=TENANT) is True
    assert store.delete("gone", tenant=TENANT) is False
    assert store.delete("never", tenant=TENANT) is False
    assert store.get("gone", tenant=TENANT) is None
    assert store.count() == 1
    assert [r.user_id for r in store.users()] == ["kept"]
    store.close()
    raw = users.raw()
    assert [p["user_id"] for p in raw] == ["kept"]
    assert "secret-item" not in repr(raw)


def test_tenants_are_isolated(store: UserStore) -> None:
    store.put(user("u", "shop-a", profile=0.0, who="a"))
    store.put(user("u", "shop-b", profile=90.0, who="b"))
    store.put(user("v", "shop-a"))

    assert store.get("u", tenant="shop-a").payload["who"] == "a"  # type: ignore[union-attr]
    assert store.get("u", tenant="shop-b").payload["who"] == "b"  # type: ignore[union-attr]
    assert store.get("v", tenant="shop-b") is None
    assert (store.count("shop-a"), store.count("shop-b"), store.count("shop-c")) == (2, 1, 0)
    assert sorted(r.user_id for r in store.users("shop-a")) == ["u", "v"]
    assert store.delete("u", tenant="shop-a") is True
    assert store.get("u", tenant="shop-b") is not None
    assert store.delete("v", tenant="shop-b") is False


def test_users_lists_every_user_across_pages(store: UserStore) -> None:
    wanted = {(tenant, f"u{n}") for n in range(150) for tenant in ("shop-a", "shop-b")}
    for tenant, user_id in sorted(wanted):
        store.put(user(user_id, tenant, profile=float(len(user_id))))

    listed = list(store.users())
    assert len(listed) == 300 and {(r.tenant, r.user_id) for r in listed} == wanted
    assert {r.user_id for r in store.users("shop-b")} == {f"u{n}" for n in range(150)}
    assert all(set(r.vectors) == {"profile"} for r in listed)
    assert list(store.users("nobody")) == []


def test_reopening_keeps_the_users(users: Users) -> None:
    first = users.open()
    first.put(user("u", profile=45.0))
    first.flush()
    first.close()

    with users.open() as again:
        same(again.get("u", tenant=TENANT), user("u", profile=45.0))
        assert again.count() == 1


@pytest.mark.parametrize(
    ("dims", "expected"),
    [
        pytest.param({"profile": 9, "behaviour": 4}, "'profile' has size 8", id="size"),
        pytest.param({"profile": 8}, "'behaviour' (size 4) not configured", id="dropped"),
        pytest.param({**DIMS, "taste": 3}, "'taste' (size 3) is missing", id="added"),
    ],
)
def test_reopening_with_other_dims_fails(users: Users, dims: dict[str, int],
                                         expected: str) -> None:
    users.open().close()
    with pytest.raises(SchemaMismatch, match="start the users over") as raised:
        users.open(dims)
    assert expected in str(raised.value)


def test_close_is_idempotent_and_calls_after_it_fail(users: Users) -> None:
    with users.open() as store:
        store.put(user("u"))
        assert store.description
    store.close()
    for call in (lambda: store.get("u", tenant=TENANT), lambda: store.put(user("v")),
                 lambda: store.delete("u", tenant=TENANT), lambda: list(store.users()),
                 store.count, store.flush):
        with pytest.raises(FailedPrecondition, match="closed"):
            call()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        pytest.param(UserRecord(TENANT, "u", {}, {"tenant": "elsewhere"}), "keeps tenant",
                     id="payload-tenant"),
        pytest.param(UserRecord(TENANT, "u", {}, {"user_id": "other"}), "keeps user_id",
                     id="payload-user-id"),
        pytest.param(UserRecord(TENANT, "u", {}, {"when": object()}), "JSON", id="not-json"),
        pytest.param(UserRecord(TENANT, "u", {}, {"x": float("nan")}), "JSON", id="nan"),
        pytest.param(UserRecord(TENANT, "", {}, {}), "user_id", id="empty-id"),
        pytest.param(UserRecord("", "u", {}, {}), "tenant", id="empty-tenant"),
        pytest.param(UserRecord(TENANT, "u", {"profile": np.ones(7)}, {}), "shape",
                     id="wrong-size"),
        pytest.param(UserRecord(TENANT, "u", {"taste": np.ones(3)}, {}), "unknown vector",
                     id="unknown-vector"),
        pytest.param(UserRecord(TENANT, "u", {"profile": np.zeros(8)}, {}), "all zeros",
                     id="zero-vector"),
    ],
)
def test_bad_users_are_rejected(store: UserStore, record: UserRecord, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        store.put(record)
    assert store.count() == 0


def test_the_stores_own_keys_may_be_repeated_in_the_payload(store: UserStore) -> None:
    store.put(UserRecord(TENANT, "u", {}, {"tenant": TENANT, "user_id": "u", "a": 1}))
    got = store.get("u", tenant=TENANT)
    assert got is not None and dict(got.payload) == {"a": 1}  # the store's keys come off


def test_a_user_store_needs_a_vector(users: Users) -> None:
    with pytest.raises(InvalidInput, match="at least one named vector"):
        users.open({})


# -- choosing the backend, and the users beside the items' data dir ------------------------------


def test_open_user_store_picks_the_backend_from_the_settings(tmp_path: Path) -> None:
    with open_user_store(StoreSettings(data_dir=tmp_path / "data"), DIMS) as store:
        assert isinstance(store, EdgeUserStore)
        assert str(tmp_path / "data" / "users") in store.description
    with pytest.raises(Unavailable, match="qdrant server"):
        open_user_store(StoreSettings(url="http://127.0.0.1:9", collection="c"), DIMS)


def test_a_second_open_of_the_users_folder_is_refused(tmp_path: Path) -> None:
    with EdgeUserStore(tmp_path, DIMS) as first:
        first.put(user("u"))
        with pytest.raises(FailedPrecondition, match="in use by another mmrec process"):
            EdgeUserStore(tmp_path, DIMS)
        assert first.count() == 1
    probe = (
        "import sys; from pathlib import Path\n"
        "from engine.domain import FailedPrecondition\n"
        "from engine.store import EdgeUserStore\n"
        "try:\n"
        f"    EdgeUserStore(Path(sys.argv[1]), {DIMS!r})\n"
        "except FailedPrecondition as exc:\n"
        "    print(exc); sys.exit(7)\n"
    )
    with EdgeUserStore(tmp_path, DIMS):
        result = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60,
        )
    assert result.returncode == 7, result.stderr
    assert f"pid {os.getpid()}" in result.stdout


def test_the_items_store_leaves_the_users_folder_alone(tmp_path: Path) -> None:
    settings = StoreSettings(data_dir=tmp_path)
    with open_user_store(settings, DIMS) as users:
        users.put(user("u"))
    with EdgeStore(tmp_path, SCHEMA, indexing_threshold_kb=1) as items:
        items.upsert([item("a"), item("b", 30.0)])
        items.optimize(wait=True)  # a build swaps shard versions and removes the old one
        assert items.shard_path.name == "shard-000002"
    (tmp_path / "manifest.json.tmp").write_text("{ half", encoding="utf-8")
    with EdgeStore(tmp_path, SCHEMA) as items, open_user_store(settings, DIMS) as users:
        assert items.count() == 2
        same(users.get("u", tenant=TENANT), user("u"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock", "manifest.json", "shard-000002", "users"
    ]


def test_concurrent_calls_from_a_thread_pool(tmp_path: Path) -> None:
    with EdgeUserStore(tmp_path, DIMS) as store:

        def worker(w: int) -> int:
            found = 0
            for n in range(40):
                store.put(user(f"w{w}-{n}", profile=float(n)))
                found += store.get(f"w{w}-{n}", tenant=TENANT) is not None
                if n % 20 == 0:  # each delete vacuums the shard (~0.5 s): keep them few
                    assert store.delete(f"w{w}-{n}", tenant=TENANT) is True
                found += sum(1 for _ in store.users("nobody"))
            return found

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(worker, range(4))) == [40] * 4
        assert store.count(TENANT) == 4 * 38


# -- erasure on disk (edge) --------------------------------------------------------------------


def files_holding(folder: Path, needle: str) -> list[str]:
    """The files under ``folder`` whose bytes contain ``needle`` (UTF-8), relative paths."""
    data = needle.encode()
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and data in path.read_bytes())


def point_id_traces(folder: Path, tenant: str, user_id: str) -> list[str]:
    """The files holding the user's point id, as text or as the 16 bytes of the UUID."""
    point = user_point_id(tenant, user_id)
    raw = uuid.UUID(point).bytes
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and (raw in path.read_bytes()
                                         or point.encode() in path.read_bytes()))


def traced_user(user_id: str, version: int = 0) -> UserRecord:
    """A user whose id and event item ids occur nowhere else (``version`` varies the items)."""
    events = [[f"{user_id}-item-{version}-{k}", "view", 0.0, 1.7e9 + k] for k in range(20)]
    return user(user_id, profile=float(len(user_id)), events=events,
                seen=[item for item, *_ in events])


def test_delete_leaves_no_byte_of_the_user_in_any_file(tmp_path: Path) -> None:
    folder = tmp_path / "users"
    names = [f"zq-user-{n}-7f3a" for n in range(4)]
    with EdgeUserStore(folder, DIMS) as store:
        for name in names:
            store.put(traced_user(name))
        store.put(traced_user(names[2], version=1))   # its older payload stays as free blocks
        store.flush()
        assert files_holding(folder, names[2]) and files_holding(folder, f"{names[2]}-item-0-")

        assert store.delete(names[2], tenant=TENANT) is True

        assert list(folder.glob("shard-*/wal")) == []          # no qdrant WAL to keep them
        for needle in (names[2], f"{names[2]}-item-0-", f"{names[2]}-item-1-"):
            assert files_holding(folder, needle) == [], needle
        assert point_id_traces(folder, TENANT, names[2]) == []
        assert files_holding(folder, names[3]) and files_holding(folder, f"{names[3]}-item-0-")
        assert store.count() == 3
        store.put(traced_user("after-the-erasure"))
    with EdgeUserStore(folder, DIMS) as again:
        assert again.get(names[2], tenant=TENANT) is None
        for name in [*names[:2], *names[3:], "after-the-erasure"]:
            same(again.get(name, tenant=TENANT), traced_user(name))
        assert again.count() == 4
        assert again.delete("after-the-erasure", tenant=TENANT) is True
        assert again.delete(names[0], tenant=TENANT) is True
    for needle in ("after-the-erasure", names[0], names[2]):
        assert files_holding(folder, needle) == [], needle
    with EdgeUserStore(folder, DIMS) as last:
        assert sorted(r.user_id for r in last.users()) == [names[1], *names[3:]]
        for name in sorted(r.user_id for r in last.users()):
            assert last.delete(name, tenant=TENANT) is True   # down to an empty shard
        assert last.count() == 0
    assert files_holding(folder, "zq-user-") == []


def test_writes_since_the_last_flush_survive_a_crash_and_erase_after_it(tmp_path: Path) -> None:
    folder = tmp_path / "users"
    with EdgeUserStore(folder, DIMS) as store:
        store.put(traced_user("flushed-before"))
    crash = (
        "import os, sys; from pathlib import Path\n"
        "from engine.store import EdgeUserStore\n"
        "from tests.test_user_store_contract import DIMS, traced_user\n"
        "store = EdgeUserStore(Path(sys.argv[1]), DIMS)\n"
        "store.put(traced_user('crash-kept'))\n"
        "store.put(traced_user('crash-gone'))\n"
        "store.put(traced_user('flushed-before', version=1))\n"
        "os._exit(0)  # no flush, no close: the journal holds these writes\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", crash, str(folder)], capture_output=True, text=True,
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (folder / edge_users.JOURNAL_NAME).stat().st_size > 0
    with EdgeUserStore(folder, DIMS) as store:
        assert (folder / edge_users.JOURNAL_NAME).stat().st_size == 0   # replayed and flushed
        same(store.get("crash-kept", tenant=TENANT), traced_user("crash-kept"))
        same(store.get("flushed-before", tenant=TENANT), traced_user("flushed-before", 1))
        assert store.delete("crash-gone", tenant=TENANT) is True
        assert files_holding(folder, "crash-gone") == []
        assert files_holding(folder, "crash-kept")


def test_the_journal_is_emptied_by_flushes(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_users, "JOURNAL_CHECKPOINT_BYTES", 1000)
    journal = tmp_path / edge_users.JOURNAL_NAME
    with EdgeUserStore(tmp_path, DIMS) as store:
        store.put(user("a"))
        assert 0 < journal.stat().st_size < 1000
        store.put(traced_user("big"))                 # past the threshold: a checkpoint
        assert journal.stat().st_size == 0
        store.put(user("b"))
        store.flush()
        assert journal.stat().st_size == 0
        store.put(user("c"))
    assert journal.stat().st_size == 0                # close flushes too


def test_a_torn_journal_replays_what_precedes_the_tear(tmp_path: Path) -> None:
    journal = edge_users.Journal(tmp_path / "journal.jsonl")
    journal.append({"op": "put", "id": "x", "vectors": {}, "payload": {"n": 1}})
    journal.append({"op": "delete", "id": "x"})
    journal.close()
    with (tmp_path / "journal.jsonl").open("ab") as handle:
        handle.write(b'{"op":"put","id":"y","vec')
    assert [e["op"] for e in edge_users.Journal(tmp_path / "journal.jsonl").entries()] == [
        "put", "delete"]
    (tmp_path / "journal.jsonl").write_bytes(b'{"op":"delete","id":"a"}\nnot json\n'
                                             b'{"op":"delete","id":"b"}\n')
    assert edge_users.Journal(tmp_path / "journal.jsonl").entries() == [
        {"op": "delete", "id": "a"}]
