"""JSON Lines and CSV/TSV catalogs, plain or gzipped, decoded line by line."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import deque
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from engine.domain import InvalidInput
from indexers.sources.base import (
    BOM,
    READ_ERRORS,
    CatalogFile,
    SourceRow,
    bad_row,
    check_start,
    count_lines,
    good_row,
    utf8_error,
)


class _TextFile(CatalogFile):
    """A JSONL or CSV file, plain or gzipped (told by its magic bytes, not its name)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self.path.open("rb") as fh:
            self.gzipped = fh.read(2) == b"\x1f\x8b"

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
                deque(islice(fh, start_after), maxlen=0)
                for position, line in enumerate(fh, start=start_after + 1):
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
    """Feeds decoded lines to ``csv.reader`` and keeps the current record's text and UTF-8 error.

    Decoding line by line (not the whole stream) is what confines a bad byte to its row:
    UTF-8 never encodes a delimiter, quote or newline inside a multi-byte character, so
    replacing bad bytes leaves the record boundaries where they were.
    """

    def __init__(self, lines: io.BufferedIOBase) -> None:
        self.lines = lines
        self.text: list[str] = []
        self.error = ""
        self.first = True

    def __iter__(self) -> _LineTape:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        if self.first:
            line, self.first = line.removeprefix(BOM), False
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.error = self.error or utf8_error(exc)
            text = line.decode("utf-8", "replace")
        self.text.append(text)
        return text

    def take(self) -> tuple[str, str]:
        """The text and error of the record just parsed; starts the next one."""
        raw, error = "".join(self.text).rstrip("\r\n"), self.error
        self.text, self.error = [], ""
        return raw, error


class CsvSource(_TextFile):
    """CSV or TSV with a header row; position = data record ordinal (header not counted).

    Cells stay strings (the validator reads them); an empty cell leaves its key out.
    Columns with an empty header name (a spreadsheet's index column) are ignored. A blank
    line takes a position and yields nothing, as in JSONL.
    """

    format = "csv"

    def __init__(self, path: Path, delimiter: str = ",") -> None:
        super().__init__(path)
        self.delimiter = delimiter

    def rows(self, start_after: int = 0) -> Iterator[SourceRow]:
        """Records after ``start_after``; quoted cells may span lines."""
        check_start(start_after)
        with self._open() as fh:
            try:
                yield from self._records(_LineTape(fh), start_after)
            except READ_ERRORS as exc:
                raise self._unreadable(exc) from exc

    def _records(self, tape: _LineTape, start_after: int) -> Iterator[SourceRow]:
        reader = csv.reader(tape, delimiter=self.delimiter)
        header = self._header(reader, tape)
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
            if position <= start_after or cells == []:
                continue
            yield self._row(position, raw, error, cells, header)

    def _header(self, reader: Iterator[list[str]], tape: _LineTape) -> list[str]:
        try:
            names = [name.strip() for name in next(reader, [])]
        except csv.Error as exc:
            raise InvalidInput(f"the header of {self.path} is not valid CSV: {exc}") from exc
        _, error = tape.take()
        if error:
            raise InvalidInput(f"the header of {self.path} is {error}")
        duplicates = sorted({n for n in names if n and names.count(n) > 1})
        if duplicates:
            raise InvalidInput(f"the header of {self.path} names columns more than once: "
                               f"{', '.join(duplicates)}; rename them")
        return names

    def _row(self, position: int, raw: str, error: str, cells: list[str] | csv.Error,
             header: list[str]) -> SourceRow:
        if isinstance(cells, csv.Error):
            return bad_row(position, raw, f"not valid CSV: {cells}; check the quotes in this row")
        if error:
            return bad_row(position, raw, error)
        if len(cells) > len(header):
            sep = "a tab" if self.delimiter == "\t" else repr(self.delimiter)
            return bad_row(position, raw, f"row has {len(cells)} cells but the header has "
                                          f"{len(header)} columns; quote cells that contain {sep}")
        fields = {name: cell for name, cell in zip(header, cells, strict=False)
                  if name and cell != ""}
        return good_row(position, raw, fields)

    def estimate_rows(self) -> int | None:
        """Lines minus the header (an upper bound when quoted cells span lines)."""
        lines = super().estimate_rows()
        return None if lines is None else max(lines - 1, 0)
