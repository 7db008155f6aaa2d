"""Domain types shared by every layer.

Proto types stop at the service and Qdrant types stop at the store; between
them everything speaks in these plain dataclasses.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.explain import Explanation
    from engine.query import SparseVector

DEFAULT_TENANT = "default"
"""Tenant used when a caller leaves the tenant empty."""

_POINT_NAMESPACE = uuid.UUID("6f1d8a52-4a63-4b0e-9a4e-0c5b8f1e7a11")


def point_id(tenant: str, item_id: str) -> str:
    """The deterministic Qdrant point id (a UUID string) of an item.

    The same (tenant, item id) always maps to the same point, so re-indexing a
    catalog replaces items instead of duplicating them, and two tenants may use
    the same item id without colliding.
    """
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{tenant}\x1f{item_id}"))


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One catalog item as users describe it: id, tenant, text fields, image and attributes."""

    id: str
    tenant: str = DEFAULT_TENANT
    title: str = ""
    text: str = ""
    image_uri: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def point_id(self) -> str:
        """This item's deterministic point id in the store."""
        return point_id(self.tenant, self.id)

    @property
    def document_text(self) -> str:
        """The text the encoders read: title and body joined."""
        return ". ".join(part for part in (self.title.strip(), self.text.strip()) if part)


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item with its vectors, ready to upsert.

    ``vectors`` maps a named vector (``fused``, ``clip``, ``text``) to a 1-D
    float32 array, and the sparse ``lexical`` vector to a SparseVector. A channel
    the item has no data for is simply absent.
    """

    record: ItemRecord
    vectors: Mapping[str, np.ndarray | SparseVector]


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result: the item and its similarity score (higher is better)."""

    record: ItemRecord
    score: float


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Hits best first, the channels searched, and how the ranking was made."""

    hits: list[SearchHit]
    channels: list[str]
    fusion: str = ""
    reranked: int = 0
    budget_exhausted: bool = False
    explanations: list[Explanation] | None = None
    """One per hit, when asked."""


@dataclass(frozen=True, slots=True)
class RecommendResult:
    """Recommended items best first and how they were found."""

    hits: list[SearchHit]
    channels: list[str]
    fusion: str
    strategy: str
    cold_start: bool
    reranked: int = 0
    budget_exhausted: bool = False
    explanations: list[Explanation] | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction: who did what to which item, how much, and when (unix seconds)."""

    user_id: str
    item_id: str
    kind: str
    value: float = 0.0
    timestamp: float = 0.0
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class Erasure:
    """What :meth:`ProfileBook.delete` removed."""

    events: int
    seen: int
    profile: bool
    cache_entries: int


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """Whether a model is loaded, under which name, and why not when it is not."""

    role: str
    name: str
    loaded: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One named vector: size, weight in the fused vector, and whether it is filled."""

    name: str
    dim: int
    weight: float
    enabled: bool


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What `mmrec info` shows."""

    version: str
    device: str
    store: str
    item_count: int
    models: list[ModelStatus] = field(default_factory=list)
    channels: list[ChannelStatus] = field(default_factory=list)
