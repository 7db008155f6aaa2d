"""Reading catalog rows into validated items, one bad row never stopping the job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import InvalidInput, MmrecError
from engine.images import load_image
from engine.pipeline import ItemInput
from engine.types import DEFAULT_TENANT, ItemRecord

RESERVED = ("id", "tenant", "title", "text", "image")


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row the job skipped: its 1-based line number, id when known, the raw line and why."""

    line: int
    id: str
    reason: str
    raw: str


def read_jsonl(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | BadRow]]:
    """Yield (line number, raw line, parsed row or BadRow) for each non-blank line.

    Bytes that are not UTF-8 and JSON that does not parse become BadRows with
    the reason, so the caller can dead-letter them and go on.
    """
    with path.open("rb") as fh:
        for number, raw_bytes in enumerate(fh, start=1):
            try:
                raw = raw_bytes.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                text = raw_bytes.decode("utf-8", errors="replace").strip()
                yield number, text, BadRow(number, "", f"not valid UTF-8: {exc}", text)
                continue
            if not raw:
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield number, raw, BadRow(number, "", f"not valid JSON: {exc.msg}", raw)
                continue
            if not isinstance(row, dict):
                yield number, raw, BadRow(number, "", "a row must be a JSON object", raw)
                continue
            yield number, raw, row


def row_to_record(row: dict[str, Any]) -> ItemRecord:
    """Validate one catalog row (id, title, text, image, tenant, any attributes)."""
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


def row_to_input(row: dict[str, Any], base_dir: Path, load_images: bool) -> ItemInput:
    """A validated row with its image decoded (when the CLIP channel can use it)."""
    record = row_to_record(row)
    image = None
    if record.image_uri and load_images:
        image = load_image(record.image_uri, base_dir)
    elif record.image_uri and not record.document_text:
        raise InvalidInput("row has only an image, and the CLIP channel is off")
    return ItemInput(record=record, image=image)


def read_catalog(path: Path, *, load_images: bool) -> Iterator[ItemInput | BadRow]:
    """Validated items and BadRows from a JSONL catalog, in file order."""
    base_dir = path.parent
    for number, raw, row in read_jsonl(path):
        if isinstance(row, BadRow):
            yield row
            continue
        try:
            yield row_to_input(row, base_dir, load_images)
        except MmrecError as exc:
            yield BadRow(number, str(row.get("id", "")), str(exc), raw)
