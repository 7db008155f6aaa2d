"""What every catalog reader shares: the row type, the reader protocol, limits and helpers."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.domain import InvalidInput

MAX_RAW_CHARS = 10_000
"""``SourceRow.raw`` is cut to this many characters (dead-letter files stay readable)."""

MAX_ROW_BYTES = 1024 * 1024
"""Largest row a reader parses (``--max-row-bytes``); a longer one is dead-lettered unparsed.

A JSON row costs many times its size to parse (a 50 MB line took 7.9 GB and 107 s), so
lines are read at most this long and the rest of an oversize line is skipped in chunks."""

SKIP_CHUNK = 1 << 16
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


@dataclass(frozen=True, slots=True)
class Oversize:
    """A line longer than the row limit: its length, its first bytes, its quote count."""

    size: int
    """Bytes before the line's newline."""
    head: bytes
    quotes: int
    """How many ``"`` the whole line holds (CSV keeps quoted cells in step with it)."""


def bounded_lines(fh: io.BufferedIOBase, max_bytes: int) -> Iterator[bytes | Oversize]:
    """The lines of a binary stream, newline kept, each read at most ``max_bytes`` long.

    A longer line comes as an :class:`Oversize` and is skipped in chunks, so memory stays
    at about ``max_bytes`` whatever the file holds (one line of 50 MB, no newline at all).
    """
    while line := fh.readline(max_bytes + 1):
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line
            continue
        size, quotes, chunk = len(line), line.count(b'"'), line
        while chunk and not chunk.endswith(b"\n"):
            chunk = fh.readline(SKIP_CHUNK)
            size, quotes = size + len(chunk), quotes + chunk.count(b'"')
        yield Oversize(size - chunk.endswith(b"\n"), line[:MAX_RAW_CHARS], quotes)


def oversize_reason(size: int, max_bytes: int) -> str:
    """Why an oversize row was not parsed (the job counts reasons by the text before ':')."""
    return (f"row too large: {size:,} bytes, above the limit of {max_bytes:,} bytes "
            "(raise --max-row-bytes to index it)")


SNIFF_BYTES = 8192
BINARY_SHARE = 0.1
"""A text catalog whose first bytes are more than this share NUL, control characters or
invalid UTF-8 is refused whole: it is a binary file or another encoding, and every row
would fail. Below it, the bad bytes are the rows' problem (each one dead-lettered)."""
_CONTROLS = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n\r\f\v")


def check_text(path: Path, head: bytes) -> None:
    """InvalidInput when ``head``, a text catalog's first bytes, does not look like UTF-8 text."""
    text = head.decode("utf-8", "replace")
    if not text:
        return
    bad = sum(1 for ch in text if ch == "\ufffd" or ch in _CONTROLS)
    if bad / len(text) > BINARY_SHARE:
        raise InvalidInput(
            f"catalog {path} is not UTF-8 text ({bad / len(text):.0%} of its first "
            f"{len(head):,} bytes are NUL, control or invalid UTF-8 bytes): a binary file or "
            "another encoding; catalogs are UTF-8 JSON Lines or CSV (convert with e.g. "
            "`iconv -t utf-8`), Parquet, or a folder of images")


def good_row(position: int, raw: str, fields: dict[str, Any]) -> SourceRow:
    return SourceRow(position, raw[:MAX_RAW_CHARS], fields)


def bad_row(position: int, raw: str, error: str) -> SourceRow:
    return SourceRow(position, raw[:MAX_RAW_CHARS], None, error)


def utf8_error(exc: UnicodeDecodeError) -> str:
    """The reason a person reads for bytes that are not UTF-8 (the job counts it by prefix)."""
    byte = exc.object[exc.start]
    return (f"not valid UTF-8: byte 0x{byte:02x} at byte {exc.start + 1} of the row "
            f"({exc.reason}); save the catalog as UTF-8")


def check_row_limit(max_row_bytes: int) -> None:
    if max_row_bytes < 1:
        raise InvalidInput(f"the row size limit must be 1 byte or more, got {max_row_bytes}")


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

    def __init__(self, path: Path, max_row_bytes: int = MAX_ROW_BYTES) -> None:
        check_row_limit(max_row_bytes)
        self.path = path.absolute()
        self.base_dir = self.path.parent
        self.max_row_bytes = max_row_bytes

    def fingerprint(self) -> str:
        """Absolute path, size and modification time, and the row limit (which decides which
        rows are read: a run with another limit is not the same job)."""
        stat = self.path.stat()
        return (f"{self.path}|size={stat.st_size}|mtime_ns={stat.st_mtime_ns}"
                f"|max_row_bytes={self.max_row_bytes}")
