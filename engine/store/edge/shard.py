"""Opening the shard of an EdgeStore data dir, and helpers every embedded store shares.

The data dir's manifest names the current shard version and the schema it was
indexed with (see ``engine.store.edge.rebuild``). :func:`open_item_shard` loads that shard
after checking the schema, or creates the first one with its payload indexes;
:func:`load_shard`, :func:`backend_errors` and :func:`in_use` are shared with the
users shard (``engine.store.edge.users``) so both report a held shard or a failing engine
the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

from qdrant_edge import (
    BinaryQuantizationConfig,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FloatIndexParams,
    KeywordIndexParams,
    Memory,
    Modifier,
    ScalarQuantizationConfig,
    ScalarType,
    UpdateOperation,
)

from engine.domain import FailedPrecondition, MmrecError, SchemaMismatch, Unavailable
from engine.store.base import FLOAT_INDEXED_FIELDS, KEYWORD_INDEXED_FIELDS, VectorSchema
from engine.store.edge.data_dir import DataDir
from engine.store.schema import Quantization, QuantizationKind

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


def edge_version() -> str:
    """The installed qdrant-edge-py version, for descriptions and manifests."""
    try:
        return metadata.version("qdrant-edge-py")
    except metadata.PackageNotFoundError:
        return "unknown"


def in_use(root: Path, holder: str = "") -> FailedPrecondition:
    """The error for a data dir another process (or store object) holds."""
    return FailedPrecondition(
        f"data dir {root} is in use by another mmrec process (a running service or index "
        f"job{f', pid {holder}' if holder else ''}); stop it or use another --data-dir"
    )


@contextlib.contextmanager
def backend_errors(action: str) -> Iterator[None]:
    """Turn qdrant-edge's bare exceptions into ``Unavailable``; ours pass through."""
    try:
        yield
    except MmrecError:
        raise
    except Exception as exc:
        raise Unavailable(f"embedded store failed to {action}: {exc}") from exc


def load_shard(path: Path, root: Path) -> EdgeShard:
    """Load the shard at ``path`` of data dir ``root``; ``FailedPrecondition`` if it cannot.

    qdrant-edge locks a shard's WAL: a shard another process holds fails to load
    with ``WouldBlock``, reported as the data dir being in use. A shard without a
    WAL (the users shard) has no such lock; the data dir's flock keeps others out.
    """
    try:
        return EdgeShard.load(str(path))
    except Exception as exc:
        if "WouldBlock" in str(exc):
            raise in_use(root) from exc
        raise FailedPrecondition(f"cannot load shard {path}: {exc}") from exc


def create_payload_indexes(
    shard: EdgeShard, keyword: Sequence[str], floats: Sequence[str] = ()
) -> None:
    """Keyword indexes (``tenant`` marked as the tenant key) and float (range) indexes.

    The float indexes build no payload HNSW links: they serve ``order_by`` and range
    filters, not filtered vector search, and their values change often.
    """
    for field in keyword:
        params = KeywordIndexParams(is_tenant=field == "tenant")
        shard.update(UpdateOperation.create_field_index(field, params))
    for field in floats:
        shard.update(UpdateOperation.create_field_index(field, FloatIndexParams(enable_hnsw=False)))


def ensure_float_indexes(shard: EdgeShard, fields: Sequence[str]) -> list[str]:
    """Create the float indexes a shard made by an older mmrec lacks; returns those made."""
    existing = shard.info().payload_schema
    missing = [field for field in fields if field not in existing]
    if missing:
        create_payload_indexes(shard, (), missing)
        shard.flush()
    return missing


def write_manifest(
    data_dir: DataDir, schema: VectorSchema, current: Path, quantization: QuantizationKind
) -> None:
    """Make ``current`` the shard version the data dir opens with (atomic), recording the
    quantization the shard was created with (a shard keeps it for life)."""
    data_dir.write_manifest({
        "format": MANIFEST_FORMAT,
        "schema": schema.to_json(),
        "quantization": quantization,
        "current": current.name,
        "written_by": f"qdrant-edge-py {edge_version()}",
    })


def shard_quantization(data_dir: DataDir, configured: Quantization) -> Quantization:
    """The quantization searches of the opened shard use: the kind the manifest recorded
    (``"none"`` for a shard made before it was), with the configured oversampling and
    rescoring. A configured kind that differs is logged: it applies only to a new shard."""
    manifest = data_dir.read_manifest() or {}
    kind = manifest.get("quantization", "none")
    if kind != configured.kind:
        logger.warning("data dir %s was indexed with quantization %r, not the configured %r; "
                       "re-index into a fresh data dir to change it",
                       data_dir.root, kind, configured.kind)
    return dataclasses.replace(configured, kind=kind)  # InvalidInput for a garbled kind


def _quantization_config(
    quantization: Quantization,
) -> ScalarQuantizationConfig | BinaryQuantizationConfig | None:
    """qdrant-edge's quantization config for the shard, quantized vectors pinned in RAM."""
    if quantization.kind == "int8":
        return ScalarQuantizationConfig(type=ScalarType.Int8, quantile=0.99,
                                        memory=Memory.Pinned)
    if quantization.kind == "binary":
        return BinaryQuantizationConfig(memory=Memory.Pinned)
    return None


def _create_item_shard(
    data_dir: DataDir, schema: VectorSchema, indexing_threshold_kb: int | None,
    quantization: Quantization,
) -> tuple[EdgeShard, Path]:
    """Create version 1 (cosine dense vectors, IDF sparse vectors, payload indexes).

    With quantization the float32 originals are memory-mapped from disk (``Memory.Cold``)
    and only the quantized copies are held in RAM; the index build makes them."""
    version_dir = data_dir.first_version()
    optimizers = None
    if indexing_threshold_kb is not None:
        optimizers = EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb)
    originals = Memory.Cold if quantization.enabled else None
    config = EdgeConfig(
        vectors={
            name: EdgeVectorParams(size=size, distance=Distance.Cosine, memory=originals)
            for name, size in schema.dense.items()
        },
        sparse_vectors={
            name: EdgeSparseVectorParams(modifier=Modifier.Idf) for name in schema.sparse
        },
        optimizers=optimizers,
        quantization_config=_quantization_config(quantization),
    )
    shard = EdgeShard.create(str(version_dir), config)
    create_payload_indexes(shard, KEYWORD_INDEXED_FIELDS, FLOAT_INDEXED_FIELDS)
    shard.flush()
    write_manifest(data_dir, schema, version_dir, quantization.kind)
    return shard, version_dir


def open_item_shard(
    data_dir: DataDir, schema: VectorSchema, indexing_threshold_kb: int | None,
    quantization: Quantization,
) -> tuple[EdgeShard, Path]:
    """Load the shard the manifest names (checking the schema) or create the first one.

    A shard created before the popularity index existed gets it here (no index build
    runs while a store opens, so the change needs no replay).
    """
    root = data_dir.root
    try:
        manifest = data_dir.read_manifest()
        stored = None if manifest is None else VectorSchema.from_json(manifest["schema"])
    except (OSError, ValueError, KeyError, TypeError, MmrecError) as exc:
        raise FailedPrecondition(
            f"the manifest of data dir {root} is unreadable ({exc}); "
            f"re-index into a fresh --data-dir"
        ) from exc
    if manifest is None or stored is None:
        return _create_item_shard(data_dir, schema, indexing_threshold_kb, quantization)
    differences = stored.differences(schema)
    if differences:
        raise SchemaMismatch(
            f"data dir {root} was indexed with other vectors than configured: "
            f"{'; '.join(differences)}. Re-index the catalog into it from scratch "
            f"(remove the data dir first) or choose another --data-dir"
        )
    version_dir = root / str(manifest.get("current"))
    if not version_dir.is_dir():
        raise FailedPrecondition(
            f"data dir {root} names shard {version_dir.name}, which is missing; "
            f"re-index into a fresh --data-dir"
        )
    shard = load_shard(version_dir, root)
    try:
        with backend_errors(f"add payload indexes to {version_dir}"):
            ensure_float_indexes(shard, FLOAT_INDEXED_FIELDS)
    except BaseException:
        shard.close()
        raise
    return shard, version_dir
