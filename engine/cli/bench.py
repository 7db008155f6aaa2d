"""``mmrec bench``: the benchmark suites, run from a source checkout.

The suites live in the repository's ``benchmarks/`` folder, beside the data sets that
`make data` unpacks; they are not part of the installed package (a wheel carries the engine,
not its measurements). This command finds the checkout the engine was installed from
(``pip install -e``) and runs ``python -m benchmarks.bench`` there with the same options,
or says plainly that there is none.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

CHECKOUT = Path(__file__).resolve().parents[2]
"""The folder above ``engine/``: a source checkout when ``benchmarks/bench.py`` is there."""


def bench(
    suites: Annotated[list[str] | None, typer.Argument(
        help="Suites to run (quality, clip, ann, scale, quantisation, service, indexing, "
             "gpu); all when none is named.", show_default=False)] = None,
    quick: Annotated[bool, typer.Option(help="The short run: under 10 minutes on 2 cores.")
                     ] = False,
    out: Annotated[Path | None, typer.Option(
        help="Results folder (default benchmarks/results/).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    list_suites: Annotated[bool, typer.Option("--list", help="List the suites and exit.")
                           ] = False,
) -> None:
    """Run the benchmark suites; writes results.json, results.md and PNG plots."""
    runner = CHECKOUT / "benchmarks" / "bench.py"
    if not runner.is_file():
        typer.echo(f"mmrec bench runs from a source checkout: {runner} is not there (the "
                   "benchmarks are not part of the installed package)", err=True)
        raise typer.Exit(2)
    argv = [*(suites or []), "--device", device]
    argv += ["--quick"] if quick else []
    argv += ["--out", str(out.resolve())] if out else []
    argv += ["--list"] if list_suites else []
    code = subprocess.call([sys.executable, "-m", "benchmarks.bench", *argv], cwd=CHECKOUT)
    raise typer.Exit(code)
