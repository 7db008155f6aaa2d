"""Catalog readers: JSONL, CSV/TSV, Parquet and folders of images, streamed row by row.

Bulk jobs read catalogs of millions of rows, some of them broken. Every reader
here streams (memory stays flat whatever the catalog's size), numbers its rows
with stable 1-based positions so a job can resume after a position, and turns a
row it cannot parse into a :class:`SourceRow` with an error instead of stopping.
Only a source that is unreadable as a whole (a binary file, a CSV header that is
not UTF-8, a truncated gzip stream, a file that is not Parquet) raises
``InvalidInput``. A row above the row size limit is an error row, not parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from engine.domain import InvalidInput, NotFound
from indexers.sources.base import (
    ACCEPTED,
    BOM,
    CAPTION_SUFFIXES,
    FORMATS,
    IMAGE_SUFFIXES,
    MAX_RAW_CHARS,
    MAX_ROW_BYTES,
    PARQUET_BATCH_ROWS,
    SUFFIX_FORMATS,
    CatalogSource,
    SourceRow,
)
from indexers.sources.folder import FolderSource
from indexers.sources.parquet import ParquetSource
from indexers.sources.text import CsvSource, JsonlSource

__all__ = [
    "CAPTION_SUFFIXES",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "MAX_RAW_CHARS",
    "MAX_ROW_BYTES",
    "PARQUET_BATCH_ROWS",
    "SUFFIX_FORMATS",
    "CatalogSource",
    "CsvSource",
    "FolderSource",
    "JsonlSource",
    "ParquetSource",
    "SourceRow",
    "detect_format",
    "open_source",
]

log = logging.getLogger(__name__)


def detect_format(path: Path) -> str:
    """The format a path's extension (or being a folder) names; InvalidInput when none does."""
    if path.is_dir():
        return "folder"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    found = SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if found is None or (found == "parquet" and path.suffix.lower() == ".gz"):
        raise InvalidInput(f"cannot tell the format of {path} from its name; accepted: "
                           f"{ACCEPTED}; or give the format explicitly")
    return found


def open_source(path: Path, *, format: str | None = None, max_row_bytes: int = MAX_ROW_BYTES,
                schema: Mapping[str, str] | None = None,
                allow_outside_paths: bool = False) -> CatalogSource:
    """The reader for a catalog file or folder; ``format`` overrides the extension.

    ``max_row_bytes``: rows above it are error rows (text formats: never parsed).
    ``schema``: forced CSV column types (``indexers.sources.cells``); CSV/TSV only.
    ``allow_outside_paths``: a folder's captions may resolve outside it.
    """
    if not path.exists():
        raise NotFound(f"catalog {path} does not exist")
    fmt = (format or detect_format(path)).lower()
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown catalog format {format!r}; use one of {', '.join(FORMATS)}")
    if (fmt == "folder") != path.is_dir():
        kind = "a folder" if path.is_dir() else "a file"
        raise InvalidInput(f"{path} is {kind}, which cannot be read as {fmt}; "
                           "pass a folder for 'folder' and a file for the other formats")
    if schema and fmt not in ("csv", "tsv"):
        raise InvalidInput(f"column types apply to CSV and TSV catalogs; {path} is read as {fmt}, "
                           "which carries its own types")
    log.info("reading %s as %s", path, fmt)
    if fmt == "folder":
        return FolderSource(path, max_row_bytes=max_row_bytes,
                            allow_outside_paths=allow_outside_paths)
    if fmt == "parquet":
        return ParquetSource(path, max_row_bytes)
    if fmt in ("csv", "tsv"):
        return CsvSource(path, delimiter="\t" if fmt == "tsv" else ",",
                         max_row_bytes=max_row_bytes, schema=schema)
    source = JsonlSource(path, max_row_bytes)
    _refuse_json_array(source)
    return source


def _refuse_json_array(source: JsonlSource) -> None:
    """A ``.json`` file holding one array would fail on every line; say so once instead."""
    name = source.path.name.lower()
    if not name.endswith((".json", ".json.gz")):
        return
    with source._open() as fh:
        head = fh.read(4096).removeprefix(BOM).lstrip()
    if head.startswith(b"["):
        raise InvalidInput(f"{source.path} holds a JSON array; catalogs must be JSON Lines, "
                           "one object per line (e.g. `jq -c '.[]' in.json > out.jsonl`)")
