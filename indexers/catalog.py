"""Validating one catalog row (from any source format) into an ItemRecord."""

from __future__ import annotations

from typing import Any

from engine.domain import DEFAULT_TENANT, InvalidInput, ItemRecord

RESERVED = ("id", "tenant", "title", "text", "image")
"""Row keys with a meaning; every other key is stored as an attribute."""


def row_to_record(row: dict[str, Any]) -> ItemRecord:
    """Validate one catalog row (id, title, text, image, tenant, any attributes).

    Raises InvalidInput naming what is wrong; the job dead-letters the row.
    """
    item_id = row.get("id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not item_id.strip():
        raise InvalidInput("row has no `id` (a non-empty string or integer)")
    for key in ("title", "text", "image", "tenant"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise InvalidInput(f"`{key}` must be a string, got {type(row[key]).__name__}")
    record = ItemRecord(
        id=item_id,
        tenant=row.get("tenant") or DEFAULT_TENANT,
        title=row.get("title") or "",
        text=row.get("text") or "",
        image_uri=row.get("image") or "",
        attributes={k: v for k, v in row.items() if k not in RESERVED},
    )
    if not record.document_text and not record.image_uri:
        raise InvalidInput("row has no title, no text and no image")
    return record
