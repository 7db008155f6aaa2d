"""Thumbnails for the explorer: an item's image, only from folders the operator named.

An item's ``image_uri`` is catalog data, written by whoever made the catalog: it may name
``/etc/shadow``, ``../../secret.png``, a FIFO, a device, or a symlink planted in an image
folder that points anywhere. The explorer is a web server, so serving ``image_uri`` as it is
would let any page that reaches it read any file the process can. Instead:

- only local paths (absolute, relative to a root, or ``file://``) are served, and only when,
  fully resolved (``..`` and every symlink followed), they lie inside one of the configured
  image roots (``mmrec explore --images-root``), themselves resolved;
- only regular files, opened without following a final symlink and ``stat``-ed through the
  open descriptor (so a swap between check and open cannot turn it into a device), at most
  ``max_bytes`` long, and only when their first bytes are PNG, JPEG, GIF or WebP: the content
  type comes from those bytes, never from the name;
- anything else (no roots, a remote ``http(s)`` URL, a refusal) gets a generated SVG
  placeholder with the item's initial, and the reason in a response header, so the page
  never fetches from elsewhere (its Content-Security-Policy allows images from itself only).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse
from xml.sax.saxutils import escape

MAX_THUMBNAIL_BYTES = 8 * 1024 * 1024
"""The largest image file the explorer sends (the service's own image limit is smaller)."""

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """Bytes to send, their content type, and why a placeholder was sent ("" for the image)."""

    body: bytes
    content_type: str
    placeholder_reason: str = ""


def sniff(head: bytes) -> str:
    """The image content type ``head`` (a file's first bytes) starts with, or ""."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return ""


class ImageRoots:
    """The folders thumbnails may come from, and the one function that reads from them."""

    def __init__(self, roots: Sequence[Path], max_bytes: int = MAX_THUMBNAIL_BYTES) -> None:
        """Keep the resolved roots that exist (a missing one is skipped, see ``missing``)."""
        self.roots = [r.resolve() for r in roots if r.is_dir()]
        self.missing = [r for r in roots if not r.is_dir()]
        self.max_bytes = max_bytes

    def thumbnail(self, image_uri: str, title: str) -> Thumbnail:
        """The item's image when it may be served, else a placeholder saying why not."""
        path, reason = self._locate(image_uri)
        if path is None:
            return placeholder(title, reason)
        try:
            body, kind = self._read(path)
        except OSError as exc:
            return placeholder(title, f"unreadable: {exc.strerror or exc}")
        except ValueError as exc:
            return placeholder(title, str(exc))
        return Thumbnail(body, kind)

    def _locate(self, image_uri: str) -> tuple[Path | None, str]:
        """The resolved file ``image_uri`` names inside a root, or None and the reason."""
        if not image_uri:
            return None, "the item has no image"
        if not self.roots:
            return None, "no image folder configured (mmrec explore --images-root)"
        parsed = urlparse(image_uri)
        if parsed.scheme in ("http", "https", "data", "ftp"):
            return None, "remote images are not fetched"
        raw = unquote(parsed.path) if parsed.scheme == "file" else image_uri
        if "\x00" in raw:
            return None, "the image path holds a NUL byte"
        candidate = Path(raw)
        tries = [candidate] if candidate.is_absolute() else [r / candidate for r in self.roots]
        for path in tries:
            try:
                real = path.resolve()
            except (OSError, RuntimeError):  # a symlink loop
                continue
            if any(real.is_relative_to(root) for root in self.roots):
                return real, ""
        return None, "the image lies outside the configured image folders"

    def _read(self, path: Path) -> tuple[bytes, str]:
        """A regular file's bytes and sniffed type; ValueError for a refusal."""
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            if info.st_size > self.max_bytes:
                raise ValueError(f"image of {info.st_size:,} bytes, above {self.max_bytes:,}")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                body = fh.read(self.max_bytes + 1)
        finally:
            os.close(fd)
        if len(body) > self.max_bytes:
            raise ValueError(f"image above {self.max_bytes:,} bytes")
        kind = sniff(body[:16])
        if not kind:
            raise ValueError("not a PNG, JPEG, GIF or WebP image")
        return body, kind


def placeholder(title: str, reason: str) -> Thumbnail:
    """A square SVG tile with the title's first letter (the page's alt text names the item)."""
    letter = escape(next((c for c in title if c.isalnum()), "?").upper())
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 96 96" role="img">'
           '<rect width="96" height="96" fill="#dfe3ea"/>'
           '<text x="48" y="62" font-family="sans-serif" font-size="44" text-anchor="middle" '
           f'fill="#333a45">{letter}</text></svg>')
    return Thumbnail(svg.encode(), "image/svg+xml", reason or "no image")
