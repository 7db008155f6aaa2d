"""EdgeUserStore: users in a qdrant-edge shard of their own, inside the engine process.

Layout (the engine passes ``DATA_DIR/users``; the items' EdgeStore ignores it)::

    users/.lock            flock held by the process that owns the users
    users/manifest.json    the users' vector sizes, and the shard's name
    users/journal.jsonl    the writes since the shard's last flush (our own write-ahead log)
    users/shard-000001/    the qdrant-edge shard, created without a WAL

Users are fetched by id, never searched, so the shard never builds HNSW
(``indexing_threshold=0`` turns vector indexing off) and needs no background
build: writes go straight to the shard under a lock, reads take none.

Erasure (``DeleteUser``): once :meth:`EdgeUserStore.delete` returns, no file in
the users folder holds the user's bytes. qdrant-edge keeps them in two places
after a plain point delete, so the store avoids both:

- **its WAL** (``wal/open-N``, 32 MiB segments): entries stay there until the
  segment fills and is truncated, which for a small users shard may be never,
  and there is no call that rewrites it. The users shard is therefore created
  with ``wal_enabled=False``, and durability comes from ``journal.jsonl`` instead,
  which the store truncates after every shard flush (including the one each
  delete does). Why not simply flush the WAL-less shard after every put: a flush
  costs ~70 ms even with nothing to write and ~145 ms after a put (1000 users,
  512-d profile, 100 events each, ext4 on the 2-core dev VM) and holds the GIL
  throughout, so every RecordEvents user write would stall the whole service;
  a put with the journal costs ~0.2 ms (the payload packed in one string, see
  :mod:`engine.store.users`).
- **segment files**: a delete only marks the point deleted; its payload (user
  id, event item ids) stays in ``payload_storage/page_*.dat`` and the keyword
  index's ``*-map/page_*.dat``, and a replaced user's older payloads stay there
  as free blocks. The shard's optimizers vacuum any segment with a deleted point
  (``deleted_threshold=0``, ``vacuum_min_vector_number=1``): ``optimize()``
  rewrites it from the live points, and the following flush removes the old
  segment folder.

"Erased" means at the file level: the freed disk blocks are not overwritten, so
a forensic read of the raw device may still find them (use disk encryption).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeVectorParams,
    Point,
    ScrollRequest,
    UpdateOperation,
)

from engine.domain import FailedPrecondition, SchemaMismatch
from engine.store.edge.data_dir import DataDir, DataDirInUse
from engine.store.edge.filters import edge_tenant_filter
from engine.store.edge.journal import Journal, put_entry, replay
from engine.store.edge.shard import (
    MANIFEST_FORMAT,
    backend_errors,
    create_payload_indexes,
    edge_version,
    in_use,
    load_shard,
)
from engine.store.users import (
    USER_KEYS,
    USER_SCROLL_PAGE,
    UserRecord,
    UserStore,
    check_user,
    dims_differences,
    prepare_user,
    records_by_user,
    stored_user,
    user_schema,
)

if TYPE_CHECKING:
    from qdrant_edge import PointId  # only in qdrant-edge's stub: what retrieve() takes a list of

logger = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"
JOURNAL_CHECKPOINT_BYTES = 8 << 20
"""A put that grows the journal past this flushes the shard and empties the journal.

It bounds what an open replays (~450 users of 512-d with 100 events, ~1 s) and
costs one flush (~70-150 ms, GIL held) per that many bytes of puts."""

ERASING_OPTIMIZERS = EdgeOptimizersConfig(
    indexing_threshold=0, deleted_threshold=0.0, vacuum_min_vector_number=1
)
"""No vector index; vacuum every segment that holds a deleted point when ``optimize()`` runs."""


class EdgeUserStore(UserStore):
    """Users in a qdrant-edge shard at ``path`` (cosine vectors of ``dims``); thread-safe.

    One process owns the folder (``FailedPrecondition`` for a second open, as for
    ``EdgeStore``); reopening with other ``dims`` is a ``SchemaMismatch``. Opening
    replays the journal a crash left, and moves a shard with a WAL to one without.
    """

    def __init__(self, path: Path, dims: Mapping[str, int]) -> None:
        schema = user_schema(dims)
        self.dims = dict(schema.dense)
        self._schema = schema
        self._root = Path(path)
        self._write_lock = threading.Lock()
        self._state = threading.Condition()  # guards _closed and _readers
        self._closed = False
        self._readers = 0
        self._erasure_pending = False
        """A delete's vacuum failed: the next delete runs it even for an unknown user."""
        try:
            self._dir = DataDir(self._root)
        except DataDirInUse as exc:
            raise in_use(self._root, exc.holder) from None
        try:
            self._shard, self._path = self._open()
            try:
                self._journal = Journal(self._root / JOURNAL_NAME)
                try:
                    self._recover()
                except BaseException:
                    self._journal.close()
                    raise
            except BaseException:
                self._shard.close()
                raise
        except BaseException:
            self._dir.release()
            raise
        logger.info("opened %s", self.description)

    # -- opening -----------------------------------------------------------------------------

    def _open(self) -> tuple[EdgeShard, Path]:
        """Load the users shard (checking its vector sizes) or create it."""
        try:
            manifest = self._dir.read_manifest()
            stored = None if manifest is None else {
                str(name): int(size) for name, size in dict(manifest["dims"]).items()
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(
                f"the manifest of users folder {self._root} is unreadable ({exc}); remove the "
                f"folder to start the users over (their profiles are lost)"
            ) from exc
        if manifest is None or stored is None:
            (self._root / JOURNAL_NAME).unlink(missing_ok=True)  # a crash before the manifest
            return self._create()
        differences = dims_differences(stored, self.dims)
        if differences:
            raise SchemaMismatch(
                f"users folder {self._root} holds other user vectors than configured: "
                f"{'; '.join(differences)}. The users' vectors follow the item vectors' "
                f"configuration: restore the configuration they were made with, or remove "
                f"the folder to start the users over (their profiles are lost)"
            )
        path = self._root / str(manifest.get("current"))
        if not path.is_dir():
            raise FailedPrecondition(
                f"users folder {self._root} names shard {path.name}, which is missing; remove "
                f"the folder to start the users over"
            )
        self._dir.remove_stale(keep=path)  # a copy a crash left half made
        return load_shard(path, self._root), path

    def _new_shard(self, path: Path) -> EdgeShard:
        """An empty WAL-less shard (no vector index, vacuuming optimizers) with its indexes."""
        config = EdgeConfig(
            vectors={
                name: EdgeVectorParams(size=size, distance=Distance.Cosine)
                for name, size in self.dims.items()
            },
            optimizers=ERASING_OPTIMIZERS,
            wal_enabled=False,
        )
        shard = EdgeShard.create(str(path), config)
        try:
            create_payload_indexes(shard, USER_KEYS)
        except BaseException:
            shard.close()
            raise
        return shard

    def _write_manifest(self, path: Path) -> None:
        """Make ``path`` the users shard the folder opens with (atomic)."""
        self._dir.write_manifest({
            "format": MANIFEST_FORMAT,
            "dims": self.dims,
            "current": path.name,
            "written_by": f"qdrant-edge-py {edge_version()}",
        })

    def _create(self) -> tuple[EdgeShard, Path]:
        """The first shard, flushed, then the manifest naming it."""
        path = self._dir.first_version()  # removes what a crash before the manifest left
        with backend_errors(f"create the users shard at {path}"):
            shard = self._new_shard(path)
            try:
                shard.flush()
            except BaseException:
                shard.close()
                raise
        self._write_manifest(path)
        return shard, path

    def _recover(self) -> None:
        """Replay what the journal holds and finish an interrupted erasure.

        A journal that is not empty means the last run did not flush (a crash, or a
        delete whose vacuum failed): its entries are replayed, then the shard is
        vacuumed and flushed and the journal emptied, as a delete would have done.
        """
        entries = self._journal.entries()
        with backend_errors(f"replay the users journal {self._journal.path}"):
            replay(self._shard, entries)
        if entries:
            logger.info("replayed %d users journal entries into %s", len(entries), self._path)
        if entries or self._journal.size:
            with backend_errors(f"vacuum the users shard {self._path}"):
                self._erase(self._shard)

    # -- reading and writing -------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self, action: str) -> Iterator[EdgeShard]:
        """The shard, kept open until the caller is done; backend errors as ``Unavailable``."""
        with self._state:
            if self._closed:
                raise FailedPrecondition(f"the users store at {self._root} is closed")
            self._readers += 1
        try:
            with backend_errors(action):
                yield self._shard
        finally:
            with self._state:
                self._readers -= 1
                self._state.notify_all()

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[EdgeShard]:
        """The shard with the write lock held (writes are serialised, reads are not)."""
        with self._write_lock, self._reading(action) as shard:
            yield shard

    def _checkpoint(self, shard: EdgeShard) -> None:
        """Flush the shard, then empty the journal (every entry is in the segments now)."""
        shard.flush()
        self._journal.clear()

    def _erase(self, shard: EdgeShard) -> None:
        """Vacuum the segments with deleted points, flush, empty the journal.

        ``optimize()`` rewrites each segment holding a deleted point from its live
        points (a segment left empty is replaced by a new one, though ``optimize``
        then returns False), and the flush removes the old segment folders. Measured
        on the 2-core dev VM (ext4, shared): ~0.1-0.4 s even for a handful of users
        (writing a new segment costs ~70 fsyncs and ~90 msyncs; ~0.1 s of it is CPU),
        ~0.5-1.2 s for 1000 users of 512-d with 100 events each, ~2.1 s for 4000,
        so ~0.5 ms per user beyond the fixed part. The GIL is held all along
        (qdrant-edge's optimiser does not release it): a DeleteUser pauses the
        service that long. Nothing else triggers a vacuum: puts leave no deleted points.
        """
        self._erasure_pending = True
        shard.optimize()
        self._checkpoint(shard)
        self._erasure_pending = False

    def get_many(self, user_ids: Sequence[str], *, tenant: str) -> dict[str, UserRecord]:
        """The records of those users that exist, by user id (one retrieve)."""
        wanted: list[PointId] = [check_user(tenant, u) for u in dict.fromkeys(user_ids)]
        if not wanted:
            return {}
        with self._reading("read users") as shard:
            records = shard.retrieve(wanted, with_payload=True, with_vector=True)
        return records_by_user(((r.payload, r.vector) for r in records), tenant, user_ids)

    def put_many(self, records: Sequence[UserRecord]) -> None:
        """Insert or replace whole users in one update; journalled, so they survive a crash.

        ~0.2 ms for one user (1000 users, 512-d, 100 events; ~2 ms before the payload
        was packed into one string). Every
        ``JOURNAL_CHECKPOINT_BYTES`` of puts, one also flushes the shard (~70-150 ms)
        to empty the journal.
        """
        prepared = [prepare_user(self._schema, record) for record in records]
        if not prepared:
            return
        points = [Point(p.point_id, dict(p.vectors), p.payload) for p in prepared]
        with self._writing("write users") as shard:
            shard.update(UpdateOperation.upsert_points(points))
            for p in prepared:
                self._journal.append(put_entry(p.point_id, p.vectors, p.payload))
            if self._journal.size >= JOURNAL_CHECKPOINT_BYTES:
                self._checkpoint(shard)

    def delete(self, user_id: str, *, tenant: str) -> bool:
        """Erase the user from the shard and from every file; ``True`` if it existed.

        When this returns, no file in the users folder holds the user's payload
        (user id, event item ids) or point id: the point is deleted, its segment
        vacuumed and flushed (the old segment folder removed), and the journal
        emptied; the shard has no qdrant WAL (see the module docstring). Costs one
        vacuum of the user's segment, ~0.5-1.2 s at 1000 users (:meth:`_erase`),
        GIL held. A delete whose vacuum failed raises ``Unavailable``; the point is
        gone then but its bytes may not be, and the next ``delete`` (for any user,
        so a retry too) or open vacuums again.
        """
        point = check_user(tenant, user_id)
        with self._writing("delete a user") as shard:
            existed = bool(shard.retrieve([point], with_payload=False, with_vector=False))
            if existed:
                shard.update(UpdateOperation.delete_points([point]))
                self._journal.append({"op": "delete", "id": point})
            if existed or self._erasure_pending:
                self._erase(shard)
        return existed

    def users(self, tenant: str | None = None) -> Iterator[UserRecord]:
        """Every user (or one tenant's), a page per request, by point id."""
        condition = None if tenant is None else edge_tenant_filter(tenant)
        offset = None
        while True:
            request = ScrollRequest(
                offset=offset, limit=USER_SCROLL_PAGE, filter=condition,
                with_payload=True, with_vector=True,
            )
            with self._reading("list users") as shard:
                page, offset = shard.scroll(request)
            for stored in page:
                record = stored_user(stored.payload, stored.vector)
                if record is not None:
                    yield record
            if offset is None:
                return

    def count(self, tenant: str | None = None) -> int:
        """All users, or one tenant's."""
        condition = None if tenant is None else edge_tenant_filter(tenant)
        with self._reading("count users") as shard:
            return int(shard.count(CountRequest(exact=True, filter=condition)))

    def flush(self) -> None:
        """Persist every acknowledged write in the segments and empty the journal."""
        with self._writing("flush the users") as shard:
            self._checkpoint(shard)

    # -- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close the shard once no call runs on it, release the folder; idempotent.

        The journal is emptied only after a successful flush; otherwise it stays
        for the next open to replay.
        """
        with self._write_lock:
            with self._state:
                if self._closed:
                    return
                self._closed = True
                self._state.wait_for(lambda: self._readers == 0)
            try:
                self._checkpoint(self._shard)
            except Exception:
                logger.exception("flushing the users shard %s failed; its journal keeps the "
                                 "writes for the next open", self._path)
            try:
                self._shard.close()
                self._journal.close()
            except Exception:
                logger.exception("closing the users shard %s failed", self._path)
            finally:
                self._dir.release()
        logger.info("closed the users shard at %s", self._path)

    @property
    def description(self) -> str:
        """One line for ``mmrec info``."""
        return f"qdrant-edge {edge_version()} users shard at {self._path}"
