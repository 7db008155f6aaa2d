"""Interaction logs: the files ``mmrec train-seq`` learns from and the benchmarks replay.

A log is one interaction per row with a user id, an item id and a time, and
optionally a kind and a value. Accepted formats, chosen by suffix:

* ``.csv`` / ``.tsv`` with a header row (``user_id``, ``item_id``, ``timestamp``,
  optional ``kind`` and ``value``; a ``rating`` column is read as the value of
  kind ``rating``);
* RecBole atomic files (``.inter``): tab-separated, typed headers such as
  ``user_id:token  item_id:token  rating:float  timestamp:float``;
* ``.jsonl``: one object per line with the same keys.

Rows that cannot be read are counted and skipped, never fatal (a bad row must
not stop a job); the caller decides whether to print them.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.domain import DEFAULT_TENANT, Event


@dataclass(slots=True)
class LogStats:
    """What reading a log found: rows read, rows skipped and why (the first few)."""

    rows: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def skip(self, line: int, why: str) -> None:
        """Count a bad row; keep the first ten reasons for the report."""
        self.skipped += 1
        if len(self.problems) < 10:
            self.problems.append(f"row {line}: {why}")


def _field_name(header: str) -> str:
    """``user_id:token`` -> ``user_id`` (RecBole's typed headers)."""
    return header.split(":", 1)[0].strip().lower()


def _rows(path: Path) -> Iterator[dict[str, object]]:
    """Raw rows as dicts with normalised keys."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield {"__error__": f"not JSON ({exc.msg})"}
                        continue
                    yield ({str(k).lower(): v for k, v in row.items()} if isinstance(row, dict)
                           else {"__error__": "not a JSON object"})
        return
    delimiter = "," if suffix == ".csv" else "\t"
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = [_field_name(h) for h in next(reader, [])]
        for values in reader:
            yield dict(zip(header, values, strict=False))


def _number(value: object) -> float:
    """A row's numeric field as ``float``; ``float``'s own TypeError or ValueError when it
    holds no number. A JSON row may hold any JSON value there, a CSV row a string."""
    if isinstance(value, str | int | float):
        return float(value)
    raise TypeError(f"float() argument must be a string or a real number, "
                    f"not {type(value).__name__!r}")


def read_events(path: Path, *, tenant: str = DEFAULT_TENANT,
                stats: LogStats | None = None) -> Iterator[Event]:
    """The interactions of a log file as events, in file order."""
    stats = stats if stats is not None else LogStats()
    for line, row in enumerate(_rows(Path(path)), start=2):
        stats.rows += 1
        if "__error__" in row:
            stats.skip(line, str(row["__error__"]))
            continue
        user, item = str(row.get("user_id", "")).strip(), str(row.get("item_id", "")).strip()
        if not user or not item:
            stats.skip(line, "user_id or item_id missing")
            continue
        try:
            timestamp = _number(row.get("timestamp") or 0.0)
            kind = str(row.get("kind") or ("rating" if "rating" in row else "view")).lower()
            value = _number(row.get("value") or row.get("rating") or 0.0)
        except (TypeError, ValueError) as exc:
            stats.skip(line, f"unreadable number ({exc})")
            continue
        if not (math.isfinite(timestamp) and math.isfinite(value)):
            stats.skip(line, "timestamp or value is not finite")
            continue
        yield Event(user, item, kind, value, timestamp, tenant)


def sequences(events: Iterator[Event]) -> dict[str, list[str]]:
    """Each user's items in time order, ties broken by item id (numerically when both are)."""

    def tie(item: str) -> tuple[int, float | str]:
        return (0, float(item)) if item.lstrip("-").isdigit() else (1, item)

    by_user: dict[str, list[tuple[float, tuple[int, float | str], str]]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append((event.timestamp, tie(event.item_id), event.item_id))
    return {user: [item for *_, item in sorted(rows)] for user, rows in by_user.items()}
