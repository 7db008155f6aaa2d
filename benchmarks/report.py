"""Writing a benchmark's results: JSON for machines, Markdown for people, a PNG plot.

Every result file says what produced its rows (issue 13): the machine, versions, commit and
date (``machine()``), and the data set and its size, the models and whether their weights
are real or random, the store backend and the device (``Provenance``, a required argument
of ``write``, so a benchmark cannot forget it).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from engine.domain import EngineInfo

COMMITTED = Path(__file__).resolve().parent / "results"
"""The results kept in the repository (benchmarks/results/)."""
RESULTS = Path(os.environ.get("MMREC_BENCH_OUT") or COMMITTED)
"""Where a benchmark writes: benchmarks/results/, or the folder ``mmrec bench --out`` names
(it passes ``MMREC_BENCH_OUT`` to each step)."""


def commit() -> str:
    """The commit measured, with ``+dirty`` when code or docs had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!benchmarks/results"],  # results written so far are not
                               cwd=root, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty.strip() else "")


def _version(package: str) -> str:
    """An installed package's version ("not installed" when it is not)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


PACKAGES = ("mmrec", "numpy", "transformers", "peft", "open_clip_torch", "qdrant-edge-py",
            "qdrant-client", "grpcio", "ray")
"""The packages whose versions a result records (besides Python and torch)."""


def machine() -> dict[str, Any]:
    """What the numbers were measured on, with which versions, at which commit and when."""
    return {
        "commit": commit(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "packages": {package: _version(package) for package in PACKAGES},
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


NONE = "none"
"""The store or device of rows that use none (arithmetic over other results, say)."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """What produced a result file's rows, beside the machine, versions, commit and date.

    ``data``: the data set and its size in words ("MovieLens-100k, 943 users, 1,682 films,
    leave-one-out test"). ``models``: role -> name and whether the weights are real or random
    (``real_weights``, ``random_weights``; random only in speed rows), empty when no model is
    used. ``store``: the backend (``edge_store()``) or ``NONE``. ``device``: "cpu" or the CUDA
    device's name (``device_name``).
    """

    data: str
    models: Mapping[str, str]
    store: str
    device: str

    def __post_init__(self) -> None:
        """Refuse blank fields: a result that does not say what produced it says nothing."""
        blank = [k for k in ("data", "store", "device") if not str(getattr(self, k)).strip()]
        blank += [f"models[{role!r}]" for role, text in self.models.items()
                  if not (role.strip() and text.strip())]
        if blank:
            raise ValueError(f"provenance fields must not be blank: {', '.join(blank)}")

    def as_json(self) -> dict[str, Any]:
        """The JSON object written beside ``machine``."""
        return {"data": self.data, "models": dict(self.models), "store": self.store,
                "device": self.device}

    def line(self) -> str:
        """The one readable line the Markdown gets before its commit."""
        models = "; ".join(f"{role}: {text}" for role, text in self.models.items()) or NONE
        return f"Data: {self.data}. Models: {models}. Store: {self.store}. Device: {self.device}."


def real_weights(name: str) -> str:
    """A model description that says its weights are real (pretrained or trained)."""
    return f"{name} (real weights)"


def random_weights(name: str) -> str:
    """A model description that says its weights are random (speed rows only)."""
    return f"{name} (random weights)"


def edge_store() -> str:
    """The embedded store and the qdrant-edge version under it."""
    return f"EdgeStore, qdrant-edge-py {_version('qdrant-edge-py')}"


def server_store() -> str:
    """The Qdrant-server store and the client version that speaks to it."""
    return f"Qdrant server store, qdrant-client {_version('qdrant-client')}"


def store_name(description: str) -> str:
    """The backend named by a store's one-line ``description`` (``EngineInfo.store``), without
    the data dir or address it holds (paths on the measuring machine mean nothing here)."""
    if description.startswith("qdrant-edge"):
        return edge_store()
    if description.startswith("qdrant server"):
        return server_store()
    return description.split(" at ")[0]


def device_name(device: str) -> str:
    """What ``device`` is: "cpu", or the name of the CUDA device ("cuda", "cuda:1") means."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return device


_ROLES: dict[str, tuple[str, Callable[[str], str]]] = {
    "text": ("text encoder", real_weights),
    "lexical": ("lexical", lambda name: f"{name}, no learned weights"),
    "llm": ("LLM re-ranker", real_weights),
    "reranker": ("trained re-ranker", real_weights),
    "behaviour": ("SASRec", lambda name: real_weights(name.split(" at ")[0])),
    "cooccurrence": ("co-occurrence", lambda _: "embeddings fitted on the recorded events"),
}
"""``EngineInfo`` model roles as provenance roles, and how each is described (the fusion
status is settings, not a model, and is left out)."""


def _clip(name: str, loaded: bool) -> str:
    """CLIP's description: "off", or its name with real or random weights (open_clip names a
    model built without weights "... random weights")."""
    if not loaded:
        return "off"
    if name.endswith(" random weights"):
        return random_weights(name.removesuffix(" random weights"))
    return real_weights(name)


def engine_models(info: EngineInfo) -> dict[str, str]:
    """The models an engine loaded (``Engine.info()``, or a server's ``client.info()``), each
    with whether its weights are real or random; CLIP says "off" when it is."""
    out: dict[str, str] = {}
    for status in info.models:
        if status.role == "clip":
            out["CLIP"] = _clip(status.name, status.loaded)
        elif status.loaded and status.role in _ROLES:
            role, describe = _ROLES[status.role]
            out[role] = describe(status.name)
    return out


def from_engine(info: EngineInfo, data: str, models: Mapping[str, str] | None = None, *,
                device: str | None = None) -> Provenance:
    """The provenance of rows an engine produced: its models, store and device, read from
    its ``info()``; ``models`` adds or overrides roles (a SASRec trained in the run), and
    ``device`` overrides the engine's when the rows' main model ran elsewhere."""
    return Provenance(data, {**engine_models(info), **(models or {})}, store_name(info.store),
                      device or device_name(info.device))


def write(name: str, data: dict[str, Any], markdown: str, *, provenance: Provenance,
          out: Path | None = None) -> tuple[Path, Path]:
    """Save ``name``.json and ``name``.md under ``out`` (default ``RESULTS``); returns their
    paths. The JSON holds ``machine`` and ``provenance`` before the data; the Markdown ends
    with the provenance line and the commit."""
    folder = RESULTS if out is None else out
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    stamped = {"machine": machine(), "provenance": provenance.as_json(), **data}
    json_path.write_text(json.dumps(stamped, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + f"\n\n{provenance.line()}\n\n"
                       f"Measured at commit {commit()}.\n")
    return json_path, md_path
