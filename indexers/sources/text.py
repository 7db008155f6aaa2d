"""JSON Lines and CSV/TSV catalogs, plain or gzipped, decoded line by line.

Lines are read at most ``max_row_bytes`` long (``bounded_lines``): an oversize row is
dead-lettered without being parsed, so one huge line costs neither the memory nor the
time its parse would.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from engine.domain import InvalidInput
from indexers.sources.base import (
    BOM,
    MAX_RAW_CHARS,
    MAX_ROW_BYTES,
    READ_ERRORS,
    SNIFF_BYTES,
    CatalogFile,
    Oversize,
    SourceRow,
    bad_row,
    bounded_lines,
    check_start,
    check_text,
    count_lines,
    good_row,
    oversize_reason,
    utf8_error,
)
from indexers.sources.cells import check_schema, convert, infer_types


class _TextFile(CatalogFile):
    """A JSONL or CSV file, plain or gzipped (told by its magic bytes, not its name).

    Refused whole (InvalidInput) when its first bytes are not UTF-8 text: a binary file
    given as a catalog would otherwise fail on every line.
    """

    def __init__(self, path: Path, max_row_bytes: int = MAX_ROW_BYTES) -> None:
        super().__init__(path, max_row_bytes)
        with self.path.open("rb") as fh:
            self.gzipped = fh.read(2) == b"\x1f\x8b"
        try:
            with self._open() as fh:
                head = fh.read(SNIFF_BYTES)
        except READ_ERRORS as exc:
            raise self._unreadable(exc) from exc
        check_text(self.path, head.removeprefix(BOM))

    def _open(self) -> io.BufferedIOBase:
        """The file's bytes, decompressed when gzipped (both are buffered binary streams)."""
        return gzip.open(self.path, "rb") if self.gzipped else self.path.open("rb")

    def _unreadable(self, exc: Exception) -> InvalidInput:
        return InvalidInput(f"catalog {self.path} could not be read to the end "
                            f"({exc.__class__.__name__}: {exc}); is the file truncated?")

    def estimate_rows(self) -> int | None:
        """Lines in the file; None for gzip, where counting would mean decompressing it all."""
        return None if self.gzipped else count_lines(self.path)


class JsonlSource(_TextFile):
    """JSON Lines; position = line number (a blank line counts but yields nothing)."""

    format = "jsonl"

    def rows(self, start_after: int = 0) -> Iterator[SourceRow]:
        """Parsed lines after ``start_after``; the lines before are read but never decoded."""
        check_start(start_after)
        with self._open() as fh:
            try:
                lines = bounded_lines(fh, self.max_row_bytes)
                deque(islice(lines, start_after), maxlen=0)
                for position, line in enumerate(lines, start=start_after + 1):
                    if isinstance(line, Oversize):
                        yield bad_row(position, line.head.decode("utf-8", "replace"),
                                      oversize_reason(line.size, self.max_row_bytes))
                        continue
                    row = _json_row(position, line.removeprefix(BOM) if position == 1 else line)
                    if row is not None:
                        yield row
            except READ_ERRORS as exc:
                raise self._unreadable(exc) from exc


def _json_row(position: int, line: bytes) -> SourceRow | None:
    """One JSONL line as a row; None for a blank line."""
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        return bad_row(position, line.decode("utf-8", "replace").strip(), utf8_error(exc))
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return bad_row(position, text, f"not valid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(value, dict):
        return bad_row(position, text, "a row must be a JSON object")
    return good_row(position, text, value)


class _LineTape:
    """Feeds decoded lines to ``csv.reader`` and keeps the current record's text and errors.

    Decoding line by line (not the whole stream) is what confines a bad byte to its row:
    UTF-8 never encodes a delimiter, quote or newline inside a multi-byte character, so
    replacing bad bytes leaves the record boundaries where they were. An oversize line
    reaches the reader as a stand-in with the same quote parity, so a quoted cell that
    spans it still ends where it did, and its record is reported as too large.
    """

    def __init__(self, lines: Iterator[bytes | Oversize], max_bytes: int) -> None:
        self.lines = lines
        self.max_bytes = max_bytes
        self.text: list[str] = []
        self.chars = 0
        self.size = 0
        """Bytes of the record's lines before their newlines, plus one per line."""
        self.error = ""
        self.first = True

    def __iter__(self) -> _LineTape:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        stand_in = None
        if isinstance(line, Oversize):
            stand_in = '"' * (line.quotes % 2) + "\n"
            self.size += line.size + 1
            line = line.head
        else:
            self.size += len(line) - line.endswith(b"\n") + 1
        if self.first:
            line, self.first = line.removeprefix(BOM), False
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.error = self.error or utf8_error(exc)
            text = line.decode("utf-8", "replace")
        if self.chars < MAX_RAW_CHARS:
            self.text.append(text)
            self.chars += len(text)
        return text if stand_in is None else stand_in

    def take(self) -> tuple[str, str]:
        """The text and error of the record just parsed; starts the next one."""
        raw, error = "".join(self.text).rstrip("\r\n"), self.error
        if self.size - 1 > self.max_bytes:  # bytes before its last newline
            error = oversize_reason(self.size - 1, self.max_bytes)
        self.text, self.chars, self.size, self.error = [], 0, 0, ""
        return raw, error


@dataclass(frozen=True, slots=True)
class _Record:
    """One CSV record: position, text, its non-empty named cells, or why it is unusable."""

    position: int
    raw: str
    cells: dict[str, str] = field(default_factory=dict)
    error: str = ""


class CsvSource(_TextFile):
    """CSV or TSV with a header row; position = data record ordinal (header not counted).

    Cells are typed per column as ``indexers.sources.cells`` says (ints, floats,
    booleans; ids and the other text fields stay strings), unless ``schema`` forces a
    column's type. Finding the types reads the file once before the first row. An empty
    cell leaves its key out. Columns with an empty header name (a spreadsheet's index
    column) are ignored. A blank line takes a position and yields nothing, as in JSONL.
    """

    format = "csv"

    def __init__(self, path: Path, delimiter: str = ",", *, max_row_bytes: int = MAX_ROW_BYTES,
                 schema: Mapping[str, str] | None = None) -> None:
        super().__init__(path, max_row_bytes)
        self.delimiter = delimiter
        self.schema = check_schema(schema or {})
        self.columns: list[str] = []
        self._types: dict[str, str] | None = None

    def rows(self, start_after: int = 0) -> Iterator[SourceRow]:
        """Records after ``start_after``, typed; quoted cells may span lines."""
        check_start(start_after)
        types = self.column_types()
        for record in self._records():
            if record.position > start_after:
                yield self._row(record, types)

    def column_types(self) -> dict[str, str]:
        """Each column's type (columns left out are text), found once by reading the file."""
        if self._types is None:
            types = infer_types((r.cells for r in self._records() if not r.error), self.schema)
            unknown = sorted(set(self.schema) - set(self.columns))
            if unknown:
                raise InvalidInput(f"the schema names columns {self.path} does not have: "
                                   f"{', '.join(unknown)}")
            self._types = types
        return self._types

    def fingerprint(self) -> str:
        """The file's, plus the forced schema (another schema types the rows otherwise)."""
        return f"{super().fingerprint()}|schema={sorted(self.schema.items())}"

    def _records(self) -> Iterator[_Record]:
        """Every record in order, blank lines left out (their positions still count)."""
        with self._open() as fh:
            try:
                tape = _LineTape(bounded_lines(fh, self.max_row_bytes), self.max_row_bytes)
                reader = csv.reader(tape, delimiter=self.delimiter)
                self.columns = self._header(reader, tape)
                position = 0
                while True:
                    try:
                        cells: list[str] | csv.Error = next(reader)
                    except StopIteration:
                        return
                    except csv.Error as exc:
                        cells = exc
                    position += 1
                    raw, error = tape.take()
                    if cells != [] or error:
                        yield self._record(position, raw, error, cells)
            except READ_ERRORS as exc:
                raise self._unreadable(exc) from exc

    def _header(self, reader: Iterator[list[str]], tape: _LineTape) -> list[str]:
        try:
            names = [name.strip() for name in next(reader, [])]
        except csv.Error as exc:
            raise InvalidInput(f"the header of {self.path} is not valid CSV: {exc}") from exc
        _, error = tape.take()
        if error:
            raise InvalidInput(f"the header of {self.path} is not usable: {error}")
        duplicates = sorted({n for n in names if n and names.count(n) > 1})
        if duplicates:
            raise InvalidInput(f"the header of {self.path} names columns more than once: "
                               f"{', '.join(duplicates)}; rename them")
        return names

    def _record(self, position: int, raw: str, error: str,
                cells: list[str] | csv.Error) -> _Record:
        if isinstance(cells, csv.Error):
            return _Record(position, raw,
                           error=f"not valid CSV: {cells}; check the quotes in this row")
        if error:
            return _Record(position, raw, error=error)
        if len(cells) > len(self.columns):
            sep = "a tab" if self.delimiter == "\t" else repr(self.delimiter)
            return _Record(position, raw, error=f"row has {len(cells)} cells but the header has "
                           f"{len(self.columns)} columns; quote cells that contain {sep}")
        named = {name: cell for name, cell in zip(self.columns, cells, strict=False)
                 if name and cell != ""}
        return _Record(position, raw, named)

    def _row(self, record: _Record, types: dict[str, str]) -> SourceRow:
        """The record's row with typed cells, or a bad row saying what is wrong."""
        if record.error:
            return bad_row(record.position, record.raw, record.error)
        fields: dict[str, Any] = {}
        for name, cell in record.cells.items():
            try:
                fields[name] = convert(cell, types.get(name, "str"))
            except ValueError as exc:
                return bad_row(record.position, record.raw,
                               f"column {name!r} is typed {types[name]}: {exc}")
        return good_row(record.position, record.raw, fields)

    def estimate_rows(self) -> int | None:
        """Lines minus the header (an upper bound when quoted cells span lines)."""
        lines = super().estimate_rows()
        return None if lines is None else max(lines - 1, 0)
