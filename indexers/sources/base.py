"""What every catalog reader shares: the row type, the reader protocol, limits and helpers."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.domain import InvalidInput

MAX_RAW_CHARS = 10_000
"""``SourceRow.raw`` is cut to this many characters (dead-letter files stay readable)."""

PARQUET_BATCH_ROWS = 1024
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})
CAPTION_SUFFIXES = frozenset({".txt", ".json"})
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                  ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
FORMATS = ("jsonl", "csv", "tsv", "parquet", "folder")
ACCEPTED = (".jsonl, .ndjson, .json, .csv, .tsv (each optionally gzipped, .gz), "
             ".parquet, .pq, or a folder of images")
BOM = b"\xef\xbb\xbf"
READ_ERRORS = (OSError, EOFError, zlib.error)
"""What reading a truncated or corrupt (gzipped) file raises mid-stream."""


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One catalog row: its stable position, its text for a dead-letter file, and its fields.

    ``fields`` is None when the row could not be parsed; ``error`` then says why.
    """

    position: int
    raw: str
    fields: dict[str, Any] | None
    error: str = ""


class CatalogSource(Protocol):
    """What the indexing pipeline needs from a catalog, whatever its format."""

    path: Path
    base_dir: Path
    format: str

    def rows(self, start_after: int = 0) -> Iterator[SourceRow]:
        """Rows with position > ``start_after``, in order; skipped rows are not parsed."""

    def estimate_rows(self) -> int | None:
        """About how many positions the source has (a progress bar's total), found cheaply."""

    def fingerprint(self) -> str:
        """A string that changes when the source does, so a checkpoint is never misapplied."""


def good_row(position: int, raw: str, fields: dict[str, Any]) -> SourceRow:
    return SourceRow(position, raw[:MAX_RAW_CHARS], fields)


def bad_row(position: int, raw: str, error: str) -> SourceRow:
    return SourceRow(position, raw[:MAX_RAW_CHARS], None, error)


def utf8_error(exc: UnicodeDecodeError) -> str:
    """The reason a person reads for bytes that are not UTF-8 (the job counts it by prefix)."""
    byte = exc.object[exc.start]
    return (f"not valid UTF-8: byte 0x{byte:02x} at byte {exc.start + 1} of the row "
            f"({exc.reason}); save the catalog as UTF-8")


def check_start(start_after: int) -> None:
    if start_after < 0:
        raise InvalidInput(f"start_after must be 0 or more, got {start_after}")


def count_lines(path: Path) -> int:
    """Lines in a file (a last line without a newline counts), read in binary chunks."""
    count, last = 0, b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


class CatalogFile:
    """A catalog in one file: relative image paths resolve against its folder."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.base_dir = self.path.parent

    def fingerprint(self) -> str:
        """Absolute path, size and modification time."""
        stat = self.path.stat()
        return f"{self.path}|size={stat.st_size}|mtime_ns={stat.st_mtime_ns}"
