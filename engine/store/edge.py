"""EdgeStore: the embedded store, a qdrant-edge shard inside the engine process.

The data dir holds versioned shard directories and a manifest naming the
current one (see ``edge_rebuild``). ``optimize()`` never blocks serving: it
optimizes a copy of the shard in a child process, logs every write made
meanwhile, replays them into the optimized copy and switches the manifest to it
atomically. Until the switch the manifest names the old shard, so a crash
mid-build loses nothing and the next open removes the unfinished copy.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    KeywordIndexParams,
    Modifier,
    Point,
    QueryBatchRequest,
    UpdateOperation,
)

from engine.errors import FailedPrecondition, MmrecError, SchemaMismatch, Unavailable
from engine.query import FusedHit, HybridQuery
from engine.store.base import (
    KEYWORD_INDEXED_FIELDS,
    VectorSchema,
    VectorStore,
    payload_to_record,
    prepare_items,
    unique_in_order,
)
from engine.store.edge_query import edge_vector, hybrid_requests
from engine.store.edge_rebuild import BuildCancelled, DataDir, DataDirInUse, IndexBuilds
from engine.store.filters import edge_tenant_filter
from engine.store.hybrid import fused_hits, plan_hybrid
from engine.types import ItemRecord, StoredItem, point_id

logger = logging.getLogger(__name__)

_MANIFEST_FORMAT = 1


def _edge_version() -> str:
    """The installed qdrant-edge-py version, for descriptions and the manifest."""
    try:
        return metadata.version("qdrant-edge-py")
    except metadata.PackageNotFoundError:
        return "unknown"


def _in_use(root: Path, holder: str = "") -> FailedPrecondition:
    """The error for a data dir another process (or store object) holds."""
    return FailedPrecondition(
        f"data dir {root} is in use by another mmrec process (a running service or index "
        f"job{f', pid {holder}' if holder else ''}); stop it or use another --data-dir"
    )


@contextlib.contextmanager
def _backend_errors(action: str) -> Iterator[None]:
    """Turn qdrant-edge's bare exceptions into ``Unavailable``; ours pass through."""
    try:
        yield
    except MmrecError:
        raise
    except Exception as exc:
        raise Unavailable(f"embedded store failed to {action}: {exc}") from exc


class _ShardRef:
    """A loaded shard and how many queries run on it; closed only once none do."""

    __slots__ = ("path", "readers", "shard")

    def __init__(self, shard: EdgeShard, path: Path) -> None:
        self.shard = shard
        self.path = path
        self.readers = 0


class EdgeStore(VectorStore):
    """A qdrant-edge shard in a data dir owned by this process; safe to call from many threads.

    Writes are serialised by a lock; queries do not take it, so they never wait
    behind a write, a copy or a replay. ``indexing_threshold_kb`` (only used when
    the shard is created) is the segment size above which ``optimize()`` builds
    HNSW; ``None`` keeps Qdrant's default (smaller segments are brute-forced).
    """

    def __init__(
        self,
        path: Path,
        schema: VectorSchema,
        *,
        hnsw_ef: int = 128,
        indexing_threshold_kb: int | None = None,
    ) -> None:
        self.schema = schema
        self._root = Path(path)
        self._hnsw_ef = hnsw_ef
        self._write_lock = threading.Lock()  # writes, flushes, the copy and the swap
        self._readers = threading.Condition()  # guards _ref, _closed and reader counts
        self._closed = False
        try:
            self._dir = DataDir(self._root)
        except DataDirInUse as exc:
            raise _in_use(self._root, exc.holder) from None
        try:
            self._ref = self._open(indexing_threshold_kb)
            self._dir.remove_stale(keep=self._ref.path)
        except BaseException:
            self._dir.release()
            raise
        self._builds = IndexBuilds(self._dir, self._write_lock, self._serving, self._install)
        logger.info("opened %s", self.description)

    # -- opening -----------------------------------------------------------------------------

    def _open(self, indexing_threshold_kb: int | None) -> _ShardRef:
        """Load the shard the manifest names (checking the schema) or create the first one."""
        try:
            manifest = self._dir.read_manifest()
            stored = None if manifest is None else VectorSchema.from_json(manifest["schema"])
        except (OSError, ValueError, KeyError, TypeError, MmrecError) as exc:
            raise FailedPrecondition(
                f"the manifest of data dir {self._root} is unreadable ({exc}); "
                f"re-index into a fresh --data-dir"
            ) from exc
        if manifest is None or stored is None:
            return self._create(indexing_threshold_kb)
        differences = stored.differences(self.schema)
        if differences:
            raise SchemaMismatch(
                f"data dir {self._root} was indexed with other vectors than configured: "
                f"{'; '.join(differences)}. Re-index the catalog into it from scratch "
                f"(remove the data dir first) or choose another --data-dir"
            )
        version_dir = self._root / str(manifest.get("current"))
        if not version_dir.is_dir():
            raise FailedPrecondition(
                f"data dir {self._root} names shard {version_dir.name}, which is missing; "
                f"re-index into a fresh --data-dir"
            )
        try:
            shard = EdgeShard.load(str(version_dir))
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise _in_use(self._root) from exc
            raise FailedPrecondition(f"cannot load shard {version_dir}: {exc}") from exc
        return _ShardRef(shard, version_dir)

    def _write_manifest(self, current: Path) -> None:
        """Make ``current`` the shard version the data dir opens with (atomic)."""
        self._dir.write_manifest({
            "format": _MANIFEST_FORMAT,
            "schema": self.schema.to_json(),
            "current": current.name,
            "written_by": f"qdrant-edge-py {_edge_version()}",
        })

    def _create(self, indexing_threshold_kb: int | None) -> _ShardRef:
        """Create version 1 (cosine dense vectors, IDF sparse vectors, keyword indexes)."""
        version_dir = self._dir.first_version()
        optimizers = None
        if indexing_threshold_kb is not None:
            optimizers = EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb)
        config = EdgeConfig(
            vectors={
                name: EdgeVectorParams(size=size, distance=Distance.Cosine)
                for name, size in self.schema.dense.items()
            },
            sparse_vectors={
                name: EdgeSparseVectorParams(modifier=Modifier.Idf) for name in self.schema.sparse
            },
            optimizers=optimizers,
        )
        shard = EdgeShard.create(str(version_dir), config)
        for field in KEYWORD_INDEXED_FIELDS:
            params = KeywordIndexParams(is_tenant=field == "tenant")
            shard.update(UpdateOperation.create_field_index(field, params))
        shard.flush()
        self._write_manifest(version_dir)
        return _ShardRef(shard, version_dir)

    # -- reading -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[EdgeShard]:
        """The current shard, kept open until the caller's query is done."""
        with self._readers:
            if self._closed:
                raise FailedPrecondition(f"the store at {self._root} is closed")
            ref = self._ref
            ref.readers += 1
        try:
            yield ref.shard
        finally:
            with self._readers:
                ref.readers -= 1
                if ref.readers == 0:
                    self._readers.notify_all()

    def hybrid_search(self, query: HybridQuery) -> list[FusedHit]:
        """One Query API request: a prefetch per channel, fused (see ``VectorStore``)."""
        plan = plan_hybrid(self.schema, query)
        if plan is None:
            return []
        batch = QueryBatchRequest(hybrid_requests(plan, self._hnsw_ef))
        with self._reading() as shard, _backend_errors("search"):
            results = shard.query_batch(batch)
        points = [(str(p.id), p.payload, p.score) for p in results[0]]
        rankings = [[(str(p.id), p.score) for p in ranking] for ranking in results[1:]]
        return fused_hits(plan, points, rankings or None)

    def get(self, ids: Sequence[str], *, tenant: str) -> list[ItemRecord]:
        """The records that exist, in the order asked, each once."""
        wanted = unique_in_order(ids)
        if not wanted:
            return []
        with self._reading() as shard, _backend_errors("retrieve points"):
            records = shard.retrieve(
                [point_id(tenant, item_id) for item_id in wanted],
                with_payload=True, with_vector=False,
            )
        found: dict[str, ItemRecord] = {}
        for stored in records:
            if stored.payload and stored.payload.get("tenant") == tenant:
                record = payload_to_record(stored.payload)
                found[record.id] = record
        return [found[item_id] for item_id in wanted if item_id in found]

    def count(self, tenant: str | None = None) -> int:
        """All points, or one tenant's."""
        condition = None if tenant is None else edge_tenant_filter(tenant)
        request = CountRequest(exact=True, filter=condition)
        with self._reading() as shard, _backend_errors("count"):
            return int(shard.count(request))

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[EdgeShard]:
        """The serving shard, with the write lock held (so no copy or swap runs meanwhile)."""
        with self._write_lock:
            if self._closed:
                raise FailedPrecondition(f"the store at {self._root} is closed")
            with _backend_errors(action):
                yield self._ref.shard

    def _apply(self, shard: EdgeShard, operation: UpdateOperation) -> None:
        """Apply a write and log it for a running build; the caller is in ``_writing``."""
        shard.update(operation)
        self._builds.record(operation)

    def upsert(self, items: Sequence[StoredItem]) -> None:
        """Insert or replace items; a bad item rejects the whole batch before any write."""
        points = [
            Point(
                prepared.point_id,
                {name: edge_vector(values) for name, values in prepared.vectors.items()},
                prepared.payload,
            )
            for prepared in prepare_items(self.schema, items)
        ]
        if points:
            with self._writing("upsert") as shard:
                self._apply(shard, UpdateOperation.upsert_points(points))

    def delete(self, ids: Sequence[str], *, tenant: str) -> int:
        """Delete items of ``tenant``; returns how many existed."""
        point_ids = [point_id(tenant, item_id) for item_id in unique_in_order(ids)]
        if not point_ids:
            return 0
        with self._writing("delete") as shard:
            existing = shard.retrieve(point_ids, with_payload=False, with_vector=False)
            present = [str(stored.id) for stored in existing]
            if present:
                self._apply(shard, UpdateOperation.delete_points(present))
        return len(present)

    def flush(self) -> None:
        """Persist every acknowledged write (segments, not only the WAL)."""
        with self._writing("flush") as shard:
            shard.flush()

    # -- optimizing --------------------------------------------------------------------------

    @property
    def optimizing(self) -> bool:
        """Whether a background index build (copy, child, replay, swap) is in progress."""
        return self._builds.running

    def optimize(self, *, wait: bool = False) -> None:
        """Build HNSW indexes without blocking serving (copy, child process, replay, swap).

        Returns at once unless ``wait``; then it blocks until the optimized shard is
        in use (or the build failed, which is logged; the current shard keeps serving).
        A call while a build runs joins that build instead of starting another.
        """
        try:
            thread = self._builds.start()
        except BuildCancelled:
            raise FailedPrecondition(f"the store at {self._root} is closed") from None
        if wait:
            thread.join()

    def _serving(self) -> tuple[EdgeShard, Path]:
        """The serving shard and its directory (for the build's copy)."""
        return self._ref.shard, self._ref.path

    def _install(self, shard: EdgeShard, path: Path) -> Callable[[], None]:
        """Switch the manifest to an optimized shard and serve it; the write lock is held.

        Returns the retirement of the replaced shard, which the build runs once the
        write lock is released.
        """
        self._write_manifest(path)
        with self._readers:
            old, self._ref = self._ref, _ShardRef(shard, path)
        return lambda: self._retire(old, remove=True)

    def _retire(self, ref: _ShardRef, *, remove: bool = False) -> None:
        """Close a shard that no longer serves once no query runs on it; maybe delete it."""
        with self._readers:
            self._readers.wait_for(lambda: ref.readers == 0)
        try:
            ref.shard.close()
        except Exception:
            logger.exception("closing shard %s failed", ref.path)
        if remove:
            shutil.rmtree(ref.path, ignore_errors=True)

    # -- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop any build, flush and close the shard, release the data dir; idempotent."""
        self._builds.stop()
        with self._write_lock:
            if self._closed:
                return
            with self._readers:
                self._closed = True
                ref = self._ref
            with contextlib.suppress(Exception):
                ref.shard.flush()
        self._retire(ref)
        self._dir.release()
        logger.info("closed qdrant-edge shard at %s", ref.path)

    @property
    def shard_path(self) -> Path:
        """The shard version directory now serving (it changes after each index build)."""
        return self._ref.path

    @property
    def description(self) -> str:
        """One line for ``mmrec info``."""
        return f"qdrant-edge {_edge_version()} shard at {self._ref.path}"

    def info(self) -> dict[str, int]:
        """Points, segments and HNSW-indexed vectors of the current shard (for ``mmrec info``)."""
        with self._reading() as shard, _backend_errors("read shard info"):
            shard_info = shard.info()
        return {
            "points": int(shard_info.points_count),
            "segments": int(shard_info.segments_count),
            "indexed_vectors": int(shard_info.indexed_vectors_count),
        }
