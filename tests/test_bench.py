"""``mmrec bench``: the runner plans, skips with a reason, runs real benchmark steps in their
own processes, reports failures without stopping, and writes results.json and results.md.

The steps run here are real processes: the ``rerank_summary`` benchmark over the committed
runs (seconds), and a module that does not exist (``python -m`` exits 1 with its message).
Suites that need what a machine may lack (CUDA, CLIP weights) are checked through their real
requirement functions; the whole suites are never run in tests (they take minutes to hours;
``mmrec bench --quick`` is the short run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench, suites
from benchmarks.clip_retrieval import pair_ranks, recall
from benchmarks.report import COMMITTED
from benchmarks.suites import SUITES, Step, Suite

ROOT = Path(__file__).resolve().parents[1]


def test_every_suite_of_the_issue_is_planned_with_a_quick_run_under_ten_minutes() -> None:
    names = {s.name for s in SUITES}
    assert names == {"quality", "clip", "ann", "scale", "quantisation", "service", "indexing",
                     "gpu"}
    on_cpu = [s for s in SUITES if s.name != "gpu"]  # the 10 minutes are on 2 CPU cores
    assert sum(s.minutes(quick=True) for s in on_cpu) < 10
    steps = [s for suite in SUITES for s in suite.steps]
    assert any("1000000" in " ".join(s.full) for s in steps)  # the full run reaches 1M
    assert not any("1000000" in " ".join(s.quick or ()) for s in steps)  # --quick never


def test_unknown_suite_is_refused_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.parse(["nope"])
    assert exit_info.value.code == 2
    assert "unknown suite(s) ['nope']" in capsys.readouterr().err


def test_requirements_give_one_line_reasons() -> None:
    for check in (suites.cuda, suites.clip_weights, suites.tux_paint, suites.movielens):
        reason = check()
        assert reason is None or (reason and "\n" not in reason), reason
    import torch

    assert (suites.cuda() is None) == torch.cuda.is_available()


def test_run_skips_runs_and_reports_a_failure_without_stopping(tmp_path: Path) -> None:
    summary = Step("rerank_summary", quick=("--runs-dir", str(COMMITTED)), quick_minutes=0.1)
    failing = Step("no_such_benchmark", quick=(), quick_minutes=0.1)  # python -m fails at once
    planned = [Suite("skipped", "needs what is absent", (summary,), lambda: "no widget here"),
               Suite("broken", "a step that fails, then one that runs", (failing, summary))]
    runs = bench.run(planned, quick=True, out=tmp_path, progress=False)

    assert [(r.name, r.status) for r in runs] == [("skipped", "skipped"), ("broken", "failed")]
    assert runs[0].reason == "no widget here" and runs[0].steps == []
    broken, ran = runs[1].steps
    assert broken.status == "failed" and "No module named benchmarks.no_such_benchmark" in \
        broken.error
    assert ran.status == "ok" and "rerank_summary" in ran.outputs
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["machine"]["commit"] and saved["quick"] is True
    assert [s["status"] for s in saved["suites"]] == ["skipped", "failed"]
    step = saved["suites"][1]["steps"][1]
    assert step["outputs"]["rerank_summary"]["models"]  # the step's own JSON, kept whole
    assert (tmp_path / step["log"]).read_text().startswith("$ python -m benchmarks.rerank")
    report = (tmp_path / "results.md").read_text()
    assert "| skipped | skipped |" in report and "no widget here" in report
    assert "no_such_benchmark: exit 1" in report
    assert "## broken: Trained listwise re-ranker" in report
    made = step["outputs"]["rerank_summary"]["provenance"]  # what produced the step's rows
    assert made["data"].startswith("MovieLens-100k test") and made["models"]
    assert made["store"].startswith("none") and made["device"]
    assert "Data: MovieLens-100k test" in report  # the step's provenance line, in results.md
    assert "![" in report and (tmp_path / "rerank_summary.png").stat().st_size > 0


def test_mmrec_bench_list_goes_through_the_checkout() -> None:
    done = subprocess.run([sys.executable, "-m", "engine", "bench", "--list", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "expected time" in done.stdout and "scale" in done.stdout


def test_clip_pair_ranks_and_recall() -> None:
    text = np.eye(4, dtype=np.float32)
    image = np.eye(4, dtype=np.float32)
    image[3] = image[2]  # two identical images: the tie ranks pessimistically
    t2i, i2t = pair_ranks(text, image)
    assert t2i.tolist() == [1.0, 1.0, 2.0, 4.0]
    assert i2t.tolist() == [1.0, 1.0, 1.0, 4.0]
    assert recall(t2i) == {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0}
