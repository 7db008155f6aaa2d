"""EdgeStore: the embedded store, a qdrant-edge shard inside the engine process.

The data dir holds versioned shard directories and a manifest naming the
current one (see ``engine.store.edge.rebuild``). ``optimize()`` never blocks serving: it
optimizes a copy of the shard in a child process, logs every write made
meanwhile, replays them into the optimized copy and switches the manifest to it
atomically. Until the switch the manifest names the old shard, so a crash
mid-build loses nothing and the next open removes the unfinished copy. Every
kind of write (upserts, deletes, vector updates, popularity) goes through
``_apply``, which logs it for a running build. Opening and creating the shard
is in ``engine.store.edge.shard``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qdrant_edge import (
    CountRequest,
    Direction,
    EdgeShard,
    OrderBy,
    Point,
    PointVectors,
    QueryBatchRequest,
    ScrollRequest,
    UpdateOperation,
)

from engine.domain import (
    POPULARITY,
    FailedPrecondition,
    FusedHit,
    HybridQuery,
    ItemFilter,
    ItemRecord,
    Range,
    SearchHit,
    StoredItem,
    point_id,
)
from engine.store.base import (
    VectorSchema,
    VectorStore,
    carry_popularity,
    check_dense_name,
    check_limit,
    payload_to_record,
    popular_hits,
    popularity_increments,
    prepare_items,
    prepare_vectors,
    stored_popularity,
    stored_vector,
    unique_in_order,
)
from engine.store.batched import BatchedSearch
from engine.store.edge.data_dir import DataDir, DataDirInUse
from engine.store.edge.filters import edge_filter, edge_tenant_filter
from engine.store.edge.query import edge_vector, hybrid_requests
from engine.store.edge.rebuild import BuildCancelled, IndexBuilds
from engine.store.edge.shard import (
    backend_errors,
    edge_version,
    in_use,
    open_item_shard,
    shard_quantization,
    write_manifest,
)
from engine.store.filters import plan_filter, with_condition
from engine.store.hybrid import HybridPlan, hits_per_plan, plan_hybrid
from engine.store.schema import Quantization

if TYPE_CHECKING:
    # Only in qdrant-edge's stub: the point id of its List[PointId] parameters. A list[str]
    # is not a list[int | UUID | str] to a type checker (lists are invariant), so the lists
    # passed are declared or built as list[PointId].
    from qdrant_edge import PointId

logger = logging.getLogger(__name__)


def _payloads(shard: EdgeShard, point_ids: list[PointId], keys: list[str]) -> dict[str, dict]:
    """Point id -> the asked payload keys of the points that exist (absent keys left out)."""
    records = shard.retrieve(point_ids, with_payload=keys, with_vector=False)
    return {str(record.id): dict(record.payload or {}) for record in records}


def _existing(shard: EdgeShard, point_ids: list[PointId]) -> list[str]:
    """The point ids among ``point_ids`` that the shard holds."""
    return [str(r.id) for r in shard.retrieve(point_ids, with_payload=False, with_vector=False)]


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
    ``quantization`` applies to a shard created here; an existing one keeps its own.
    """

    def __init__(
        self,
        path: Path,
        schema: VectorSchema,
        *,
        hnsw_ef: int = 128,
        indexing_threshold_kb: int | None = None,
        quantization: Quantization | None = None,
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
            raise in_use(self._root, exc.holder) from None
        try:
            configured = quantization or Quantization()
            self._ref = _ShardRef(*open_item_shard(
                self._dir, schema, indexing_threshold_kb, configured))
            self.quantization = shard_quantization(self._dir, configured)
            self._dir.remove_stale(keep=self._ref.path)
        except BaseException:
            self._dir.release()
            raise
        self._builds = IndexBuilds(self._dir, self._write_lock, self._serving, self._install)
        self.searches = BatchedSearch(schema, self._search_plans)
        logger.info("opened %s", self.description)

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
        """One Query API request: a prefetch per channel, fused (see ``VectorStore``); with
        batching on, shared with concurrent searches (``engine.store.batched``)."""
        return self.searches(query)

    def _search_plans(self, plans: list[HybridPlan]) -> list[list[FusedHit]]:
        """Every plan's sub-requests in one qdrant-edge ``query_batch``; each plan's hits."""
        batches = [hybrid_requests(plan, self._hnsw_ef, self.quantization) for plan in plans]
        with self._reading() as shard, backend_errors("search"):
            results = shard.query_batch(QueryBatchRequest([r for b in batches for r in b]))
        return hits_per_plan(plans, [len(b) for b in batches], results)

    def batch_searches(self, *, window_ms: float, max_batch: int) -> None:
        """Concurrent searches share one request from now on (see ``VectorStore``)."""
        self.searches.enable(window_ms=window_ms, max_batch=max_batch)

    def search_batch_sizes(self) -> dict[int, int]:
        """Searches per backend request so far (see ``VectorStore``)."""
        return self.searches.batch_sizes()

    def raw_query_seconds(self, query: HybridQuery) -> float:
        """Seconds qdrant-edge alone spends answering ``query`` (its one batch request).

        For benchmarks that set the service against its raw parts: the plan and the
        request are built before the clock starts, and the answer is not converted.
        """
        plan = plan_hybrid(self.schema, query)
        if plan is None:
            return 0.0
        request = QueryBatchRequest(hybrid_requests(plan, self._hnsw_ef, self.quantization))
        with self._reading() as shard, backend_errors("search"):
            started = time.perf_counter()
            shard.query_batch(request)
            return time.perf_counter() - started

    def get(self, ids: Sequence[str], *, tenant: str) -> list[ItemRecord]:
        """The records that exist, in the order asked, each once."""
        wanted = unique_in_order(ids)
        if not wanted:
            return []
        with self._reading() as shard, backend_errors("retrieve points"):
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

    def vectors(self, ids: Sequence[str], *, tenant: str, using: str) -> dict[str, np.ndarray]:
        """Stored vectors of items on ``using``, normalised (see ``VectorStore``)."""
        check_dense_name(self.schema, using)
        by_point = {point_id(tenant, item_id): item_id for item_id in unique_in_order(ids)}
        if not by_point:
            return {}
        with self._reading() as shard, backend_errors("retrieve vectors"):
            records = shard.retrieve(list(by_point), with_payload=False, with_vector=[using])
        found = {by_point[str(r.id)]: stored_vector(r.vector, using) for r in records}
        return {i: vector for i in by_point.values() if (vector := found.get(i)) is not None}

    def popular(self, *, tenant: str, filter: ItemFilter, limit: int) -> list[SearchHit]:
        """The most popular items by an ordered scroll on the popularity index."""
        limit = check_limit(limit)
        plan = plan_filter(tenant, filter)
        ordered = ScrollRequest(
            limit=limit, filter=edge_filter(plan), with_payload=True,
            order_by=OrderBy(POPULARITY, Direction.Desc),
        )
        with self._reading() as shard, backend_errors("list popular items"):

            def tied(value: float, count: int) -> list[tuple[str, dict | None]]:
                equal = with_condition(plan, Range(POPULARITY, gte=value, lte=value))
                request = ScrollRequest(limit=count, filter=edge_filter(equal), with_payload=True)
                return [(str(r.id), r.payload) for r in shard.scroll(request)[0]]

            ranked = [(str(r.id), r.payload) for r in shard.scroll(ordered)[0]]
            return popular_hits(ranked, limit, tied)

    def count(self, tenant: str | None = None) -> int:
        """All points, or one tenant's."""
        condition = None if tenant is None else edge_tenant_filter(tenant)
        request = CountRequest(exact=True, filter=condition)
        with self._reading() as shard, backend_errors("count"):
            return int(shard.count(request))

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[EdgeShard]:
        """The serving shard, with the write lock held (so no copy or swap runs meanwhile)."""
        with self._write_lock:
            if self._closed:
                raise FailedPrecondition(f"the store at {self._root} is closed")
            with backend_errors(action):
                yield self._ref.shard

    def _apply(self, shard: EdgeShard, operation: UpdateOperation) -> None:
        """Apply a write and log it for a running build; the caller is in ``_writing``."""
        shard.update(operation)
        self._builds.record(operation)

    def upsert(self, items: Sequence[StoredItem]) -> None:
        """Insert or replace items; a bad item rejects the whole batch before any write.

        A replaced item keeps its popularity (read in the same locked step).
        """
        prepared = prepare_items(self.schema, items)
        if not prepared:
            return
        with self._writing("upsert") as shard:
            stored = _payloads(shard, [p.point_id for p in prepared], [POPULARITY])
            points = [
                Point(p.point_id, {n: edge_vector(v) for n, v in p.vectors.items()}, p.payload)
                for p in carry_popularity(prepared, stored)
            ]
            self._apply(shard, UpdateOperation.upsert_points(points))

    def set_vectors(self, vectors: Mapping[str, np.ndarray], *, tenant: str, using: str) -> int:
        """Replace the vector ``using`` of existing items (see ``VectorStore``)."""
        prepared = prepare_vectors(self.schema, vectors, using)
        by_point = {point_id(tenant, item_id): values for item_id, values in prepared.items()}
        if not by_point:
            return 0
        with self._writing("update vectors") as shard:
            present = _existing(shard, list(by_point))
            if present:
                self._apply(shard, UpdateOperation.update_vectors(
                    [PointVectors(point, {using: by_point[point]}) for point in present]
                ))
        return len(present)

    def add_popularity(self, increments: Mapping[str, float], *, tenant: str) -> int:
        """Add to the popularity of existing items, under the write lock (see ``VectorStore``)."""
        checked = popularity_increments(increments)
        by_point = {point_id(tenant, item_id): value for item_id, value in checked.items()}
        if not by_point:
            return 0
        with self._writing("add popularity") as shard:
            stored = _payloads(shard, list(by_point), [POPULARITY])
            for point, payload in stored.items():
                total = (stored_popularity(payload) or 0.0) + by_point[point]
                self._apply(shard, UpdateOperation.set_payload([point], {POPULARITY: total}))
        return len(stored)

    def delete(self, ids: Sequence[str], *, tenant: str) -> int:
        """Delete items of ``tenant``; returns how many existed."""
        point_ids: list[PointId] = [point_id(tenant, item_id) for item_id in unique_in_order(ids)]
        if not point_ids:
            return 0
        with self._writing("delete") as shard:
            present = _existing(shard, point_ids)
            if present:
                self._apply(shard, UpdateOperation.delete_points(list(present)))
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
        write_manifest(self._dir, self.schema, path, self.quantization.kind)
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
        return f"qdrant-edge {edge_version()} shard at {self._ref.path}"

    def info(self) -> dict[str, int]:
        """Points, segments and HNSW-indexed vectors of the current shard (for ``mmrec info``)."""
        with self._reading() as shard, backend_errors("read shard info"):
            shard_info = shard.info()
        return {
            "points": int(shard_info.points_count),
            "segments": int(shard_info.segments_count),
            "indexed_vectors": int(shard_info.indexed_vectors_count),
        }
