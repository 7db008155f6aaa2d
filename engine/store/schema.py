"""The named vectors a store holds, and the validation of every vector written or searched.

Dense vectors are cosine; sparse vectors (the BM25 ``lexical`` channel) carry
Qdrant's IDF modifier, so the store turns term weights into BM25 scores with
statistics of the catalog as it is. Both backends validate through here, so a
vector one accepts the other accepts too. Nothing here knows about Qdrant types.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from engine.domain import InvalidInput, SparseVector

MAX_SPARSE_INDEX = 2**32 - 1
"""Qdrant keeps sparse term ids as unsigned 32-bit integers."""

QuantizationKind = Literal["none", "int8", "binary"]
"""How a store compresses its dense vectors: not at all, Qdrant's scalar int8 (4x smaller),
or its 1-bit binary quantization (32x smaller; only for vectors whose signs carry the
similarity, e.g. large embeddings centred near zero)."""


@dataclass(frozen=True)
class Quantization:
    """The quantization of a store's dense vectors and how searches use it.

    Fixed when a store (shard or collection) is created: the quantized copies are kept
    in RAM and the float32 originals on disk (memory-mapped), which is what saves the
    memory. ``oversampling`` x limit candidates are found on the quantized vectors and,
    with ``rescore``, re-scored with the originals, so the order returned is exact
    cosine among them. ``kind="none"`` stores and searches float32 vectors only.
    """

    kind: QuantizationKind = "none"
    oversampling: float = 2.0
    rescore: bool = True

    def __post_init__(self) -> None:
        """Reject an unknown kind or an oversampling below 1 (fewer candidates than asked)."""
        if self.kind not in get_args(QuantizationKind):
            raise InvalidInput(f"quantization must be one of {get_args(QuantizationKind)}, "
                               f"got {self.kind!r}")
        if not self.oversampling >= 1.0:
            raise InvalidInput(f"quantization oversampling must be >= 1, got {self.oversampling}")

    @property
    def enabled(self) -> bool:
        """Whether dense vectors are quantized."""
        return self.kind != "none"


@dataclass(frozen=True)
class VectorSchema:
    """The named vectors of a store: dense name -> dimension (cosine), and sparse names (IDF).

    Example: ``VectorSchema({"fused": 896, "clip": 512, "text": 384}, sparse=("lexical",),
    analysers={"lexical": "mmrec-bm25/2 language=english ..."})``. A store is created
    with one schema and refuses to open with another (``SchemaMismatch``), because
    vectors of another size or channel set could not be searched together, and
    sparse vectors whose terms another analyser made would not meet the queries'.
    """

    dense: Mapping[str, int]
    sparse: Sequence[str] = field(default=())
    analysers: Mapping[str, str] = field(default_factory=dict)
    """Sparse vector name -> what made its term ids (``LexicalEncoder.analyser``); a sparse
    vector without an entry has no analyser recorded (a store made before they were)."""

    def __post_init__(self) -> None:
        """Copy the inputs (callers may mutate theirs) and reject empty or clashing names."""
        dense = {str(name): int(size) for name, size in dict(self.dense).items()}
        if not dense:
            raise InvalidInput("a vector schema needs at least one named dense vector")
        for name, size in dense.items():
            if not name:
                raise InvalidInput("dense vector names must not be empty")
            if size < 1:
                raise InvalidInput(f"dense vector {name!r} has size {size}; sizes must be >= 1")
        if isinstance(self.sparse, str):
            raise InvalidInput("sparse vector names must be a sequence of names, not a string")
        sparse = tuple(sorted({str(name) for name in self.sparse}))
        if "" in sparse:
            raise InvalidInput("sparse vector names must not be empty")
        if clash := sorted(set(sparse) & set(dense)):
            raise InvalidInput(f"vector names {clash} are both dense and sparse")
        analysers = {str(name): str(kind) for name, kind in dict(self.analysers).items()}
        if stray := sorted(set(analysers) - set(sparse)):
            raise InvalidInput(f"analysers given for {stray}, which are not sparse vectors")
        object.__setattr__(self, "dense", dict(sorted(dense.items())))
        object.__setattr__(self, "sparse", sparse)
        object.__setattr__(self, "analysers", dict(sorted(analysers.items())))

    @property
    def names(self) -> list[str]:
        """Every vector name, dense and sparse, sorted."""
        return sorted([*self.dense, *self.sparse])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form, as kept in the EdgeStore manifest."""
        return {"dense": dict(self.dense), "sparse": list(self.sparse),
                "analysers": dict(self.analysers)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VectorSchema:
        """The inverse of :meth:`to_json`; a manifest written before sparse vectors (or their
        analysers) were recorded has none."""
        return cls(dense=dict(data["dense"]), sparse=tuple(data.get("sparse") or ()),
                   analysers=dict(data.get("analysers") or {}))

    def differences(self, other: VectorSchema) -> list[str]:
        """What differs between this schema (the existing store's) and ``other`` (the asked one).

        Each entry is a short phrase for an error message; an empty list means equal.
        """
        found: list[str] = []
        for name in sorted(set(self.dense) | set(other.dense)):
            have, want = self.dense.get(name), other.dense.get(name)
            if have == want:
                continue
            if have is None:
                found.append(f"vector {name!r} (size {want}) is missing from the store")
            elif want is None:
                found.append(f"the store has vector {name!r} (size {have}) not in the config")
            else:
                found.append(
                    f"vector {name!r} has size {have} in the store but {want} in the config"
                )
        for name in sorted(set(other.sparse) - set(self.sparse)):
            found.append(f"sparse vector {name!r} is missing from the store")
        for name in sorted(set(self.sparse) - set(other.sparse)):
            found.append(f"the store has sparse vector {name!r} not in the config")
        for name in sorted(set(self.sparse) & set(other.sparse)):
            stored, wanted = self.analysers.get(name, ""), other.analysers.get(name, "")
            if stored != wanted:
                found.append(_analyser_difference(name, stored, wanted))
        return found


def _analyser_difference(name: str, have: str, want: str) -> str:
    """The phrase for a sparse vector whose terms another analyser made."""
    if not have:
        return (f"sparse vector {name!r} was indexed by an older mmrec that did not record its "
                f"analyser; the configured one is {want!r} and makes other terms")
    if not want:
        return f"sparse vector {name!r} was indexed with analyser {have!r}; none is configured"
    return f"sparse vector {name!r} was indexed with analyser {have!r}, the config's is {want!r}"


class SparseValues(NamedTuple):
    """A validated sparse vector in backend-neutral form: sorted unique term ids, weights."""

    indices: list[int]
    values: list[float]


VectorValues = list[float] | SparseValues
"""A validated vector: dense values, or a sparse vector."""


def _unknown(schema: VectorSchema, name: str) -> InvalidInput:
    """The error for a vector name the schema does not have."""
    return InvalidInput(f"unknown vector {name!r}; this store has: {', '.join(schema.names)}")


def check_dense_name(schema: VectorSchema, name: str) -> str:
    """``name`` if it names a dense vector of the schema, else ``InvalidInput``."""
    if name not in schema.dense:
        if name in schema.sparse:
            raise InvalidInput(f"vector {name!r} is sparse; this needs a dense vector")
        raise _unknown(schema, name)
    return name


def vector_values(schema: VectorSchema, name: str, vector: Any) -> list[float]:
    """Check one dense named vector against the schema and return it as a list of floats.

    Raises ``InvalidInput`` for an unknown name, a wrong shape or size, non-finite
    values, or an all-zero vector (cosine is undefined for it: a channel with no
    data must be left out, not zeroed).
    """
    if name not in schema.dense:
        if name in schema.sparse:
            raise InvalidInput(f"vector {name!r} is sparse; give it a SparseVector")
        raise _unknown(schema, name)
    if isinstance(vector, SparseVector):
        raise InvalidInput(f"vector {name!r} is dense; a SparseVector cannot be stored in it")
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"vector {name!r} is not numeric: {exc}") from exc
    size = schema.dense[name]
    if array.ndim != 1 or array.shape[0] != size:
        raise InvalidInput(f"vector {name!r} must have shape ({size},), got {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidInput(f"vector {name!r} contains NaN or infinite values")
    if not array.any():
        raise InvalidInput(
            f"vector {name!r} is all zeros; leave a channel without data out instead"
        )
    values: list[float] = array.tolist()
    return values


def sparse_values(schema: VectorSchema, name: str, vector: Any) -> SparseValues | None:
    """Check one sparse named vector; ``None`` when it is empty.

    An empty sparse vector is what BM25 gives a text of stopwords only: not an
    error, just nothing to store or search (the caller leaves it out). Raises
    ``InvalidInput`` for a non-sparse value, indices that are not strictly
    increasing integers in ``[0, 2**32)``, mismatched lengths or non-finite weights.
    """
    if name not in schema.sparse:
        if name in schema.dense:
            raise InvalidInput(f"vector {name!r} is dense; a SparseVector cannot be used for it")
        raise _unknown(schema, name)
    if not isinstance(vector, SparseVector):
        raise InvalidInput(f"vector {name!r} is sparse; give it a SparseVector")
    indices, values = np.asarray(vector.indices), np.asarray(vector.values)
    if indices.ndim != 1 or values.ndim != 1 or len(indices) != len(values):
        raise InvalidInput(f"sparse vector {name!r} needs 1-D indices and values of one length")
    if len(indices) == 0:
        return None
    if not np.issubdtype(indices.dtype, np.integer):
        raise InvalidInput(f"sparse vector {name!r} has non-integer indices")
    if indices[0] < 0 or indices[-1] > MAX_SPARSE_INDEX or (np.diff(indices) <= 0).any():
        raise InvalidInput(
            f"sparse vector {name!r} needs strictly increasing indices in [0, 2**32)"
        )
    try:
        weights = values.astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"sparse vector {name!r} has non-numeric values: {exc}") from exc
    if not np.isfinite(weights).all():
        raise InvalidInput(f"sparse vector {name!r} contains NaN or infinite values")
    return SparseValues([int(i) for i in indices], weights.tolist())


def any_vector_values(schema: VectorSchema, name: str, vector: Any) -> VectorValues | None:
    """Validate a dense or sparse vector by the kind its name has; ``None`` for empty sparse."""
    if name in schema.sparse:
        return sparse_values(schema, name, vector)
    return vector_values(schema, name, vector)


def check_limit(limit: int, what: str = "limit") -> int:
    """A search limit as an ``int``; ``InvalidInput`` unless it is an integer >= 1."""
    try:
        value = operator.index(limit)
    except TypeError:
        value = 0
    if isinstance(limit, bool) or value < 1:
        raise InvalidInput(f"{what} must be a positive integer, got {limit!r}")
    return value
