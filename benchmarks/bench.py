"""``mmrec bench``: every benchmark suite in one run, one report.

    python -m benchmarks.bench [SUITE ...] [--quick] [--out DIR] [--device auto|cpu|cuda]
    python -m benchmarks.bench --list

Runs the suites of ``benchmarks.suites`` (all of them unless named), each step in its own
process (fresh memory and timings, one crash costs one step), with the step's output in
``DIR/logs/``. A suite that cannot run here (no CLIP weights, no CUDA, no data) is skipped
with its reason in one line; a step that fails is reported with the last line it printed,
and the run goes on. The expected time is printed first and a progress bar counts it down.

Writes ``DIR/results.json`` (the machine, versions and commit, and per suite: status, reason,
seconds, and the JSON each step wrote, which carries its own data set, models and
settings), ``DIR/results.md`` (a table of suites, every step's own report, its plots, and
the published reference numbers beside ours) and leaves the steps' PNGs in ``DIR``. Exits 1
when a step failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import references, report
from benchmarks.suites import OUT, SUITES, Step, Suite

ROOT = Path(__file__).resolve().parent.parent


@dataclass(slots=True)
class StepRun:
    """What one step did."""

    step: str
    args: list[str]
    status: str  # "ok" | "failed"
    seconds: float
    log: str
    error: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SuiteRun:
    """What one suite did: ran (each step's result), or skipped with a reason."""

    name: str
    status: str  # "ok" | "failed" | "skipped"
    reason: str | None = None
    seconds: float = 0.0
    steps: list[StepRun] = field(default_factory=list)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; unknown suite names are refused with the list of known ones."""
    names = [s.name for s in SUITES]
    parser = argparse.ArgumentParser(prog="mmrec bench", description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of {names}; all")
    parser.add_argument("--quick", action="store_true", help="the short run (<10 min, 2 cores)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results folder")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.suites) - set(names))
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; the suites are {names}")
    return args


def chosen(names: list[str]) -> list[Suite]:
    """The named suites, in the order of ``SUITES``; all of them when none is named."""
    return [s for s in SUITES if not names or s.name in names]


def plan(suites: Sequence[Suite]) -> list[tuple[Suite, str | None]]:
    """The suites to run, each with the reason it cannot run here, or ``None``."""
    return [(s, s.requires()) for s in suites]


def describe(planned: list[tuple[Suite, str | None]], quick: bool) -> str:
    """The up-front plan: each suite, its expected minutes or why it is skipped, the total."""
    lines = [f"mmrec bench{' --quick' if quick else ''}: {len(planned)} suite(s)"]
    for suite, reason in planned:
        when = f"skipped: {reason}" if reason else f"~{suite.minutes(quick):.0f} min"
        lines.append(f"  {suite.name:<13} {when}  ({suite.what})")
    total = sum(s.minutes(quick) for s, r in planned if r is None)
    lines.append(f"expected time: ~{total:.0f} min on 2 CPU cores")
    return "\n".join(lines)


def run_step(step: Step, args: tuple[str, ...], out: Path, device: str,
             bar: tqdm | None) -> StepRun:
    """Run one step as ``python -m benchmarks.<module>``; its output goes to its log."""
    argv = [a.replace(OUT, str(out)) for a in args]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{step.name.replace(' ', '_').replace('(', '').replace(')', '')}.log"
    env = {**os.environ, "MMREC_BENCH_OUT": str(out)}
    if device != "auto":
        env["MMREC_DEVICE"] = device
    started, wall = time.time(), time.monotonic()
    with log.open("w") as sink:
        sink.write(f"$ python -m benchmarks.{step.module} {' '.join(argv)}\n")
        sink.flush()
        process = subprocess.Popen([sys.executable, "-m", f"benchmarks.{step.module}", *argv],
                                   cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        ticking = _tick(bar, process)
        code = process.wait()
        ticking.join()
    seconds = time.monotonic() - wall
    error = None if code == 0 else f"exit {code}: {_last_line(log)}"
    outputs = {p.stem: json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))
               if p.stat().st_mtime >= started and p.name != "results.json"}
    reports = [str(p.relative_to(out)) for p in sorted(out.rglob("*.md"))
               if p.stat().st_mtime >= started and p.name != "results.md"]
    return StepRun(step.name, argv, "ok" if code == 0 else "failed", seconds,
                   str(log.relative_to(out)), error, outputs, reports)


def _tick(bar: tqdm | None, process: subprocess.Popen[bytes]) -> threading.Thread:
    """Advance the bar a second at a time while ``process`` runs."""
    def tick() -> None:
        while process.poll() is None:
            time.sleep(1.0)
            if bar is not None and bar.n + 1 < bar.total:
                bar.update(1)
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    return thread


def _last_line(log: Path) -> str:
    """The last non-empty line a failed step printed (its error, usually)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "(no output)")[:300]


def run(suites: Sequence[Suite], quick: bool, out: Path, device: str = "auto",
        progress: bool = True) -> list[SuiteRun]:
    """Run ``suites`` and write results.json and results.md into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    planned = plan(suites)
    print(describe(planned, quick), flush=True)
    total = sum(s.minutes(quick) for s, r in planned if r is None) * 60
    runs: list[SuiteRun] = []
    with tqdm(total=max(int(total), 1), unit="s", desc="bench", disable=not progress,
              bar_format="{l_bar}{bar}| {elapsed} of ~{total}s expected{postfix}") as bar:
        done = 0.0
        for suite, reason in planned:
            if reason:
                runs.append(SuiteRun(suite.name, "skipped", reason))
                continue
            steps = []
            for step, args in suite.planned(quick):
                bar.set_postfix_str(f"{suite.name}: {step.name}")
                steps.append(run_step(step, args, out, device, bar))
                done += (step.quick_minutes if quick else step.full_minutes) * 60
                bar.n = min(int(done), bar.total)
                bar.refresh()
                tqdm.write(f"{suite.name}: {steps[-1].step} {steps[-1].status} in "
                           f"{steps[-1].seconds / 60:.1f} min"
                           + (f" ({steps[-1].error})" if steps[-1].error else ""))
            failed = any(s.status == "failed" for s in steps)
            runs.append(SuiteRun(suite.name, "failed" if failed else "ok", None,
                                 sum(s.seconds for s in steps), steps))
    save(runs, out, quick, device)
    return runs


def save(runs: list[SuiteRun], out: Path, quick: bool, device: str) -> None:
    """results.json and results.md."""
    data = {"machine": report.machine(), "quick": quick, "device": device,
            "suites": [_json(r) for r in runs]}
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(runs, out, quick, data["machine"]))


def _json(run: SuiteRun) -> dict[str, Any]:
    return {"suite": run.name, "status": run.status, "reason": run.reason,
            "seconds": round(run.seconds, 1),
            "steps": [{"step": s.step, "args": s.args, "status": s.status,
                       "seconds": round(s.seconds, 1), "log": s.log, "error": s.error,
                       "outputs": s.outputs} for s in run.steps]}


def markdown(runs: list[SuiteRun], out: Path, quick: bool, machine: dict[str, Any]) -> str:
    """The report: suites table, each step's own Markdown with its plot, the references."""
    rows = [[r.name, r.status, f"{r.seconds / 60:.1f}", r.reason or "; ".join(
        f"{s.step}: {s.error}" for s in r.steps if s.error) or ""] for r in runs]
    parts = [f"# mmrec bench{' --quick' if quick else ''}\n",
             f"Commit {machine['commit']}, {machine['when']}, Python {machine['python']}, "
             f"torch {machine['torch']}, {machine['cpu_threads']} CPU threads, CUDA "
             f"{machine['cuda'] or 'none'}, {machine['platform']}.\n",
             report.markdown_table(["suite", "status", "minutes", "note"], rows)]
    for run in runs:
        for step in run.steps:
            for page in step.reports:
                text = (out / page).read_text().strip()
                body = text.split("\n", 1)[1] if text.startswith("# ") else text
                title = text.splitlines()[0].lstrip("# ") if text.startswith("# ") else page
                parts.append(f"\n## {run.name}: {title}\n{body}")
                png = (out / page).with_suffix(".png")
                if png.is_file():
                    parts.append(f"\n![{title}]({png.relative_to(out)})")
        refs = references.for_suite(run.name)
        if refs and run.status != "skipped":
            parts.append(f"\n### Published reference numbers ({run.name})\n\n{refs}")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.bench`` and ``mmrec bench``."""
    args = parse(argv)
    if args.list:
        print(describe(plan(chosen(args.suites)), args.quick))
        return 0
    runs = run(chosen(args.suites), args.quick, args.out.resolve(), args.device)
    failed = [s.step for r in runs for s in r.steps if s.status == "failed"]
    print(f"results: {args.out / 'results.md'}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
