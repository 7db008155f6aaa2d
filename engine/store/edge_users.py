"""EdgeUserStore: users in a qdrant-edge shard of their own, inside the engine process.

Layout (the engine passes ``DATA_DIR/users``; the items' EdgeStore ignores it)::

    users/.lock            flock held by the process that owns the users
    users/manifest.json    the users' vector sizes, and the shard's name
    users/shard-000001/    the qdrant-edge shard

Users are fetched by id, never searched, so the shard never builds HNSW
(``indexing_threshold=0`` turns vector indexing off) and needs no background
build: writes go straight to the shard under a lock, reads take none.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

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

from engine.errors import FailedPrecondition, SchemaMismatch
from engine.store.edge_rebuild import DataDir, DataDirInUse
from engine.store.edge_shard import (
    MANIFEST_FORMAT,
    backend_errors,
    create_payload_indexes,
    edge_version,
    in_use,
    load_shard,
)
from engine.store.filters import edge_tenant_filter
from engine.store.users import (
    USER_KEYS,
    USER_SCROLL_PAGE,
    UserRecord,
    UserStore,
    check_user,
    dims_differences,
    prepare_user,
    stored_user,
    user_schema,
)

logger = logging.getLogger(__name__)


class EdgeUserStore(UserStore):
    """Users in a qdrant-edge shard at ``path`` (cosine vectors of ``dims``); thread-safe.

    One process owns the folder (``FailedPrecondition`` for a second open, as for
    ``EdgeStore``); reopening with other ``dims`` is a ``SchemaMismatch``.
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
        try:
            self._dir = DataDir(self._root)
        except DataDirInUse as exc:
            raise in_use(self._root, exc.holder) from None
        try:
            self._shard, self._path = self._open()
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
        return load_shard(path, self._root), path

    def _create(self) -> tuple[EdgeShard, Path]:
        """The shard (no vector index), keyword indexes, then the manifest naming it."""
        path = self._dir.first_version()  # removes what a crash before the manifest left
        config = EdgeConfig(
            vectors={
                name: EdgeVectorParams(size=size, distance=Distance.Cosine)
                for name, size in self.dims.items()
            },
            optimizers=EdgeOptimizersConfig(indexing_threshold=0),
        )
        with backend_errors(f"create the users shard at {path}"):
            shard = EdgeShard.create(str(path), config)
            create_payload_indexes(shard, USER_KEYS)
            shard.flush()
        self._dir.write_manifest({
            "format": MANIFEST_FORMAT,
            "dims": self.dims,
            "current": path.name,
            "written_by": f"qdrant-edge-py {edge_version()}",
        })
        return shard, path

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

    def get(self, user_id: str, *, tenant: str) -> UserRecord | None:
        """The user's record, or ``None``."""
        point = check_user(tenant, user_id)
        with self._reading("read a user") as shard:
            records = shard.retrieve([point], with_payload=True, with_vector=True)
        for stored in records:
            record = stored_user(stored.payload, stored.vector)
            if record is not None and (record.tenant, record.user_id) == (tenant, user_id):
                return record
        return None

    def put(self, record: UserRecord) -> None:
        """Insert or replace the whole user."""
        prepared = prepare_user(self._schema, record)
        point = Point(prepared.point_id, dict(prepared.vectors), prepared.payload)
        with self._writing("write a user") as shard:
            shard.update(UpdateOperation.upsert_points([point]))

    def delete(self, user_id: str, *, tenant: str) -> bool:
        """Erase the user's point; ``True`` if it existed."""
        point = check_user(tenant, user_id)
        with self._writing("delete a user") as shard:
            if not shard.retrieve([point], with_payload=False, with_vector=False):
                return False
            shard.update(UpdateOperation.delete_points([point]))
        return True

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
        """Persist every acknowledged write (segments, not only the WAL)."""
        with self._writing("flush the users") as shard:
            shard.flush()

    # -- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close the shard once no call runs on it, release the folder; idempotent."""
        with self._write_lock:
            with self._state:
                if self._closed:
                    return
                self._closed = True
                self._state.wait_for(lambda: self._readers == 0)
            try:
                self._shard.flush()
                self._shard.close()
            except Exception:
                logger.exception("closing the users shard %s failed", self._path)
            finally:
                self._dir.release()
        logger.info("closed the users shard at %s", self._path)

    @property
    def description(self) -> str:
        """One line for ``mmrec info``."""
        return f"qdrant-edge {edge_version()} users shard at {self._path}"
