"""Parquet catalogs, read batch by batch; resuming skips whole row groups unread."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.domain import InvalidInput
from indexers.sources.base import (
    MAX_ROW_BYTES,
    PARQUET_BATCH_ROWS,
    CatalogFile,
    SourceRow,
    bad_row,
    check_start,
    good_row,
    oversize_reason,
)

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """A value from Arrow as JSON-friendly Python: dates as ISO text, decimals as floats."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return str(value)


class ParquetSource(CatalogFile):
    """Parquet: position = row index + 1; resuming skips whole row groups unread.

    A row group that cannot be decoded yields one error row per row it holds, and the
    job goes on with the next group. A row whose JSON form is above ``max_row_bytes`` is
    an error row too, as in the text formats (Arrow has decoded it, batch by batch).
    """

    format = "parquet"

    def __init__(self, path: Path, max_row_bytes: int = MAX_ROW_BYTES) -> None:
        super().__init__(path, max_row_bytes)
        self._open().close()  # refuse a file that is not Parquet now, not mid-job

    def _open(self) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.path, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInput(f"{self.path} is not a readable Parquet file: {exc}") from exc

    def rows(self, start_after: int = 0) -> Iterator[SourceRow]:
        """Rows after ``start_after``, read batch by batch from the groups that hold them."""
        check_start(start_after)
        with self._open() as pf:
            offset = 0
            for group in range(pf.metadata.num_row_groups):
                count = pf.metadata.row_group(group).num_rows
                if offset + count > start_after:
                    yield from self._group(pf, group, offset, count, start_after)
                offset += count

    def _group(self, pf: pq.ParquetFile, group: int, offset: int, count: int,
               start_after: int) -> Iterator[SourceRow]:
        done = offset
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                skip = min(max(start_after - done, 0), batch.num_rows)
                rows = batch.slice(skip).to_pylist(maps_as_pydicts="lossy")
                for position, row in enumerate(rows, start=done + skip + 1):
                    fields = {k: _plain(v) for k, v in row.items() if v is not None}
                    raw = json.dumps(fields, default=str, ensure_ascii=False)
                    size = len(raw.encode())
                    yield good_row(position, raw, fields) if size <= self.max_row_bytes else \
                        bad_row(position, raw, oversize_reason(size, self.max_row_bytes))
                done += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            reason = (f"row group {group + 1} of the Parquet file could not be read "
                      f"({exc.__class__.__name__}: {exc}); rewrite the file")
            log.warning("%s: %s", self.path, reason)
            for position in range(max(done, start_after) + 1, offset + count + 1):
                yield bad_row(position, "", reason)

    def estimate_rows(self) -> int | None:
        """Rows in the file, from its footer."""
        with self._open() as pf:
            return int(pf.metadata.num_rows)
