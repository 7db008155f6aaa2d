"""Folders of images with optional sidecar captions, one row per image."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.domain import MmrecError
from indexers.localfiles import read_local_file
from indexers.sources.base import (
    CAPTION_SUFFIXES,
    IMAGE_SUFFIXES,
    MAX_ROW_BYTES,
    SourceRow,
    bad_row,
    check_row_limit,
    check_start,
    good_row,
)

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    """The files of one folder item: its image(s) and caption sidecars, by relative path."""

    images: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)


class FolderSource:
    """A folder of images with optional sidecar captions (``.txt`` or ``.json``, same stem).

    Position = ordinal of the image in the sorted list of ids (relative path without
    extension); hidden files and folders are ignored, and so are captions without an image.
    A caption is read as the job reads images (``indexers.localfiles``): a regular file of
    at most ``max_row_bytes``, inside the folder unless ``allow_outside_paths`` (a symlink
    that leads out is refused), so its row is dead-lettered instead.
    """

    format = "folder"

    def __init__(self, path: Path, *, max_row_bytes: int = MAX_ROW_BYTES,
                 allow_outside_paths: bool = False) -> None:
        check_row_limit(max_row_bytes)
        self.path = path.absolute()
        self.base_dir = self.path
        self.max_row_bytes = max_row_bytes
        self.allow_outside_paths = allow_outside_paths

    def _scan(self, warn: bool = False) -> tuple[list[tuple[str, _Entry]], int, int]:
        """Entries sorted by id, plus the newest mtime and total size of everything walked."""
        entries: dict[str, _Entry] = {}
        newest, total = self.path.stat().st_mtime_ns, 0
        for folder, dirs, files in os.walk(self.path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            newest = max(newest, os.stat(folder).st_mtime_ns)
            for name in files:
                suffix = os.path.splitext(name)[1].lower()
                if name.startswith(".") or suffix not in IMAGE_SUFFIXES | CAPTION_SUFFIXES:
                    continue
                full = Path(folder, name)
                with contextlib.suppress(OSError):  # a dangling link stays: its row says so
                    stat = full.stat()
                    newest, total = max(newest, stat.st_mtime_ns), total + stat.st_size
                rel = full.relative_to(self.path).as_posix()
                entry = entries.setdefault(rel[: len(rel) - len(suffix)], _Entry())
                (entry.images if suffix in IMAGE_SUFFIXES else entry.captions).append(rel)
        orphans = [e.captions[0] for e in entries.values() if not e.images]
        if orphans and warn:
            log.warning("%s: %d caption file(s) have no image next to them and are ignored, "
                        "e.g. %s", self.path, len(orphans), orphans[0])
        kept = sorted(((k, e) for k, e in entries.items() if e.images), key=lambda ke: ke[0])
        return kept, newest, total

    def rows(self, start_after: int = 0) -> Iterator[SourceRow]:
        """One row per image after ``start_after``; captions are read only for those."""
        check_start(start_after)
        entries, _, _ = self._scan(warn=True)
        for position, (key, entry) in enumerate(entries[start_after:], start=start_after + 1):
            yield self._row(position, key, entry)

    def _row(self, position: int, key: str, entry: _Entry) -> SourceRow:
        files = sorted(entry.images + entry.captions)
        raw = json.dumps({"id": key, "files": files}, ensure_ascii=False)
        if len(entry.images) > 1:
            return bad_row(position, raw,
                           f"{len(entry.images)} images share the id {key!r} "
                           f"({', '.join(sorted(entry.images))}); rename all but one")
        fields: dict[str, Any] = {"id": key, "image": str(self.path / entry.images[0])}
        if "/" in key:
            fields["category"] = key.split("/", 1)[0]
        for caption in sorted(entry.captions, key=lambda c: c.endswith(".json")):
            error = self._merge_caption(caption, fields)
            if error:
                return bad_row(position, raw, error)
        return good_row(position, json.dumps(fields, ensure_ascii=False), fields)

    def _merge_caption(self, caption: str, fields: dict[str, Any]) -> str:
        """Add a sidecar's title, text and attributes to ``fields``; the error, or ""."""
        root = None if self.allow_outside_paths else self.path
        try:
            data = read_local_file(self.path / caption, what="caption", root=root,
                                   max_bytes=self.max_row_bytes, flag="--max-row-bytes")
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return (f"caption {caption} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} "
                    f"at byte {exc.start + 1}); save it as UTF-8")
        except MmrecError as exc:
            return str(exc)
        if caption.endswith(".txt"):
            title, _, body = text.strip().partition("\n")
            fields.update({k: v.strip() for k, v in (("title", title), ("text", body))
                           if v.strip()})
            return ""
        try:
            extra = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"caption {caption} is not valid JSON: {exc.msg} at line {exc.lineno}"
        if not isinstance(extra, dict):
            return f"caption {caption} must hold a JSON object"
        fields.update({k: v for k, v in extra.items() if k != "image" and v is not None})
        return ""

    def estimate_rows(self) -> int | None:
        """Images in the folder (one listing)."""
        return len(self._scan()[0])

    def fingerprint(self) -> str:
        """Absolute path, entry count, newest mtime and total size of the files read, and the
        limits that decide which captions are read."""
        entries, newest, total = self._scan()
        return (f"{self.path}|entries={len(entries)}|newest_ns={newest}|size={total}"
                f"|max_row_bytes={self.max_row_bytes}|outside={self.allow_outside_paths}")
