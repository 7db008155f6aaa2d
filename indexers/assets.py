"""Unpacking data and model files shipped inside registry packages (used by `make data`).

    python -m indexers.assets WHEEL MEMBER_PREFIX DEST

copies every wheel member under MEMBER_PREFIX into DEST (flat), so packages
that only carry data (recbole's MovieLens copy) need not be installed with their
heavy or unneeded dependencies. The packaged LLMs, pinned by checksum and some
split across wheels, go through :mod:`indexers.models` instead.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path


def extract(wheel: Path, prefix: str, dest: Path) -> list[Path]:
    """Copy the members of ``wheel`` whose name starts with ``prefix`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.startswith(prefix) or name.endswith("/"):
                continue
            target = dest / Path(name).name
            with archive.open(name) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            written.append(target)
    if not written:
        raise SystemExit(f"{wheel} has no member under {prefix!r}")
    return written


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    files = extract(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
    print(f"unpacked {len(files)} files into {sys.argv[3]}")
