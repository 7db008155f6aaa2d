"""Reading a file a catalog names (an image, a caption) without trusting the catalog.

A catalog is data, often written by someone else: its paths may point outside
its folder (``../../etc/passwd``, ``/proc/self/environ``), at a device that
never ends (``/dev/zero``), at a FIFO that blocks the reader forever, or through
a symlink planted in an image folder. :func:`read_local_file` refuses each of
these with a domain error whose message says why, so a bulk job dead-letters
the row and goes on:

- confinement: the path is resolved (``..`` and every symlink followed) and must
  lie inside the catalog's folder, unless the caller allows outside paths;
- regular files only: the file is ``stat``-ed before it is opened, and opened
  non-blocking, so a FIFO, socket or device is never read and never blocks;
- a size cap, checked on the file's size before reading and again while reading
  (a file that grows, or a ``/proc`` file that reports size 0, stops at the cap).

Confinement checks the path as it resolves now: it guards against a careless or
hostile catalog, not against someone rewriting the folder while the job reads it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.domain import InvalidInput, NotFound

OUTSIDE_HINT = "pass --allow-outside-paths to read files outside it"
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def too_big(what: str, size: int, max_bytes: int, flag: str) -> str:
    """The reason for a file or body above a byte limit, naming the option that raises it."""
    return (f"{what} is {size:,} bytes, above the limit of {max_bytes:,} bytes; "
            f"shrink it or raise the limit ({flag})")


def confine(path: Path, root: Path | None, what: str) -> Path:
    """``path`` fully resolved; InvalidInput when ``root`` is given and it resolves outside it.

    A path that only leaves ``root`` through a symlink is reported as a link, so the
    person fixing the catalog knows which file to look at.
    """
    try:
        real = path.resolve()
        real_root = root.resolve() if root is not None else None
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise InvalidInput(f"{what} file {path} cannot be resolved: {exc}") from exc
    if real_root is None or real.is_relative_to(real_root):
        return real
    if Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root or real_root)):
        raise InvalidInput(f"{what} outside the catalog folder: {path} is a link to {real}, "
                           f"outside {real_root}; {OUTSIDE_HINT}")
    raise InvalidInput(f"{what} outside the catalog folder: {path} resolves to {real}, "
                       f"outside {real_root}; {OUTSIDE_HINT}")


def _check_regular(info: os.stat_result, path: Path, what: str) -> None:
    """InvalidInput unless ``info`` describes a regular file."""
    if stat.S_ISREG(info.st_mode):
        return
    if stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"{what} file {path} is a folder, not a file")
    kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
    raise InvalidInput(f"{what} not a regular file: {path} is {kind}; only regular files "
                       "are read")


def read_local_file(path: Path, *, what: str, max_bytes: int, root: Path | None,
                    flag: str = "--max-image-bytes") -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes``, confined to ``root``.

    ``root`` None reads anywhere (the caller allowed outside paths, or has no folder).
    Raises NotFound for a missing file and InvalidInput for every refusal; ``what``
    ("image", "caption") and ``flag`` (the option that raises the cap) go into messages.
    """
    real = confine(path, root, what)
    try:
        info = os.stat(real)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotFound(f"{what} file {path} does not exist") from exc
    except OSError as exc:
        raise InvalidInput(f"{what} file {path} cannot be read: {exc}") from exc
    _check_regular(info, path, what)
    if info.st_size > max_bytes:
        raise InvalidInput(too_big(f"{what} file {path}", info.st_size, max_bytes, flag))
    try:
        fd = os.open(real, os.O_RDONLY | _NONBLOCK | _NOFOLLOW)
    except OSError as exc:
        raise InvalidInput(f"{what} file {path} cannot be read: {exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        _check_regular(os.fstat(fd), path, what)  # swapped for a FIFO since the stat
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise InvalidInput(f"{what} file {path} cannot be read: {exc}") from exc
    if len(data) > max_bytes:  # grew since the stat, or a size-0 /proc file
        raise InvalidInput(too_big(f"{what} file {path}", len(data), max_bytes, flag))
    return data
