"""Catalog items: what users describe (ItemRecord), what gets indexed (ItemInput), what is stored.

An item is identified by (tenant, id); :func:`point_id` maps that pair to the
deterministic Qdrant point id, so re-indexing replaces instead of duplicating.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from engine.domain.vectors import SparseVector

DEFAULT_TENANT = "default"
"""Tenant used when a caller leaves the tenant empty."""

MAX_ID_CHARS = 512
"""Longest item or user id accepted anywhere (RPCs and recorded events)."""

MAX_TENANT_CHARS = 128
"""Longest tenant name accepted."""

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
class ItemInput:
    """An item to index: its record and, when it has one, its decoded image."""

    record: ItemRecord
    image: Image.Image | None = None


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item with its vectors, ready to upsert.

    ``vectors`` maps a named vector (``fused``, ``clip``, ``text``) to a 1-D
    float32 array, and the sparse ``lexical`` vector to a SparseVector. A channel
    the item has no data for is simply absent.
    """

    record: ItemRecord
    vectors: Mapping[str, np.ndarray | SparseVector]
