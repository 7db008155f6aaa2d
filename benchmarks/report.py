"""Writing a benchmark's results: JSON for machines, Markdown for people, a PNG plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

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


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and at which commit."""
    return {
        "commit": commit(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
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


def write(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Save ``name``.json and ``name``.md under benchmarks/results/; returns their paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + f"\n\nMeasured at commit {commit()}.\n")
    return json_path, md_path
