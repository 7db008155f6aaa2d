"""Catalogs built from the public data sets the demo and benchmarks use.

- MovieLens-100k (GroupLens; shipped inside the ``recbole`` wheel): 1,682 films
  with titles, release years and genres. Research use; cite Harper & Konstan
  2015. The files are unpacked by ``make data``, never committed.
- Tux Paint stamps (Debian ``tuxpaint-stamps-default``, GPL-2): about 950
  clip-art stamps in category folders, each with a one-line English caption;
  about 800 have a PNG image (the rest are SVG only and are indexed by caption).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATASETS = Path(".mmrec/datasets")
"""Where `make data` unpacks the data sets (the Makefile's DATA/datasets)."""


def movielens_dir(datasets: Path = DATASETS) -> Path:
    """The MovieLens-100k folder under a datasets folder."""
    return datasets / "ml-100k"


def stamps_dir(datasets: Path = DATASETS) -> Path | None:
    """The Tux Paint stamps folder: unpacked by `make data`, or installed system-wide."""
    for candidate in (datasets / "tuxpaint/usr/share/tuxpaint/stamps",
                      Path("/usr/share/tuxpaint/stamps")):
        if candidate.is_dir():
            return candidate
    return None


def movielens_items(folder: Path) -> Iterator[dict[str, Any]]:
    """Catalog rows for the films of ``ml-100k.item`` (RecBole's atomic file format)."""
    path = folder / "ml-100k.item"
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        for values in reader:
            row = dict(zip(header, values, strict=False))
            title = row.get("movie_title", "").strip()
            year = row.get("release_year", "").strip()
            genres = row.get("class", "").split()
            text = f"A {year} film. Genres: {', '.join(genres)}." if year else (
                f"A film. Genres: {', '.join(genres)}.")
            yield {
                "id": f"ml-{row['item_id']}",
                "title": title,
                "text": text,
                "source": "movielens-100k",
                "year": int(year) if year.isdigit() else None,
                "genres": genres,
            }


def movielens_events(folder: Path) -> Iterator[dict[str, Any]]:
    """The ratings of ``ml-100k.inter`` as interaction-log rows with catalog item ids.

    Item ids match :func:`movielens_items` (``ml-<id>``); users are ``ml-user-<id>``;
    every rating is a ``rating`` event whose value is the stars (1-5).
    """
    path = folder / "ml-100k.inter"
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        for values in reader:
            row = dict(zip(header, values, strict=False))
            yield {"user_id": f"ml-user-{row['user_id']}", "item_id": f"ml-{row['item_id']}",
                   "kind": "rating", "value": float(row["rating"]),
                   "timestamp": float(row["timestamp"])}


def tuxpaint_items(stamps: Path) -> Iterator[dict[str, Any]]:
    """Catalog rows for the Tux Paint stamps under ``stamps`` (``.../tuxpaint/stamps``)."""
    for caption_file in sorted(stamps.rglob("*.txt")):
        lines = caption_file.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = lines[0].strip() if lines else ""
        if not caption:
            continue
        relative = caption_file.relative_to(stamps).with_suffix("")
        png = caption_file.with_suffix(".png")
        parts = relative.parts
        yield {
            "id": f"tux-{relative.as_posix()}",
            "title": caption.rstrip("."),
            "text": "",
            "image": str(png.resolve()) if png.exists() else "",
            "source": "tuxpaint-stamps",
            "category": parts[0] if len(parts) > 1 else "",
            "subcategory": "/".join(parts[1:-1]),
        }


def write_jsonl(rows: Iterator[dict[str, Any]], path: Path) -> int:
    """Write rows as JSONL (creating parent folders); returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
