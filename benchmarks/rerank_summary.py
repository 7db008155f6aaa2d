"""The trained re-ranker's rows over seeds and models, from the runs of ``rerank_quality``.

    python -m benchmarks.rerank_summary [--runs 'rerank_quality_*']

Each ``benchmarks.rerank_quality --name rerank_quality_<model>_s<seed>`` run
writes one JSON file; this reads the finished ones (a run stopped part-way
is listed and left out), groups them by model and training recipe (runs
before the recipe was recorded used lr 3e-4, one example per update), and reports
per model the mean ± standard error over its seeds of the test NDCG@10 of the
hybrid (first stage) and of the blended and LLM-alone orders, the blend weights
chosen on validation, position bias, training time, and the decision rule of
the issue: the re-ranker may be on by default only when the blended row beats
the hybrid by more than two standard errors of the per-seed difference.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from benchmarks.report import (
    COMMITTED,
    NONE,
    RESULTS,
    Provenance,
    markdown_table,
    real_weights,
    write,
)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (0 for one value)."""
    if len(values) < 2:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def rows_of(run: dict[str, Any]) -> dict[str, float]:
    """The test NDCG@10 rows of one run, under names that do not carry its blend weight."""
    named = run["ndcg10"]
    blended = next(v for k, v in named.items() if k.startswith("hybrid + trained LLM, blend"))
    return {"hybrid": named["hybrid (first stage)"], "blended": blended,
            "alone": named["hybrid + trained LLM alone (w=1)"]}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's runs: means, SEs, the per-seed gain and the decision."""
    rows = [rows_of(r) for r in runs]
    out: dict[str, Any] = {"seeds": [r["args"]["seed"] for r in runs],
                           "test_users": runs[0]["test_users"]}
    for key in ("hybrid", "blended", "alone"):
        out[key] = mean_se([r[key] for r in rows])
    diff = mean_se([r["blended"] - r["hybrid"] for r in rows])
    out["gain"] = diff
    out["ratio"] = out["blended"][0] / out["hybrid"][0]
    out["weights"] = [r["blend"]["weight"] for r in runs]
    out["position_bias_top1"] = [r["position_bias"]["top1_agreement"] for r in runs]
    out["train_minutes"] = [r["training"]["seconds"] / 60 for r in runs]
    out["warm_p50_ms"] = [r["latency"]["warm_p50_ms"] for r in runs]
    out["default_on"] = len(rows) >= 3 and diff[0] > 2 * diff[1] > 0
    return out


def group(run: dict[str, Any]) -> str:
    """A run's model and training recipe, the rows' label."""
    recipe = run.get("settings", {"learning_rate": 3e-4, "batch_size": 1})
    return f"{run['model']} (lr {recipe['learning_rate']:g}, batch {recipe['batch_size']})"


def run_device(run: dict[str, Any]) -> str:
    """Where a run measured: its provenance's device; before runs recorded one, the CPU
    when the machine had no CUDA (else unknown)."""
    if "provenance" in run:
        return str(run["provenance"]["device"])
    cuda = run["machine"].get("cuda")
    return "cpu" if cuda is None else f"unknown (CUDA {cuda} present)"


def provenance(by_model: dict[str, list[dict[str, Any]]], names: list[str]) -> Provenance:
    """The runs read and their test users; every model group's LLM (and the other models the
    runs record, once they do); no store; the devices the runs measured on."""
    runs = [r for rs in by_model.values() for r in rs]
    users = sorted({r["test_users"] for r in runs})
    models: dict[str, str] = {}
    for run in runs:  # the first stage's models; the LLMs are listed per group below
        models.update({role: text for role, text in run.get("provenance", {}).get(
            "models", {}).items() if not role.startswith("LLM")})
    for label, group in by_model.items():
        seeds = [r["args"]["seed"] for r in group]
        models[f"LLM re-ranker {label}"] = real_weights(
            f"the base model + a LoRA adapter trained in each run, seeds {seeds}")
    return Provenance(f"MovieLens-100k test, {'/'.join(map(str, users))} users; the finished "
                      f"runs {', '.join(names)}", models,
                      f"{NONE} (reads the runs; their first stage is the offline replica)",
                      ", ".join(sorted({run_device(r) for r in runs})))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="rerank_quality_*")
    parser.add_argument("--runs-dir", type=Path, default=COMMITTED,
                        help="where the runs are (default: the committed benchmarks/results)")
    args = parser.parse_args()
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    names: list[str] = []
    for path in sorted(args.runs_dir.glob(f"{args.runs}.json")):
        run = json.loads(path.read_text())
        if run.get("phase", "done") != "done":
            print(f"{path.name}: left out, the run stopped after phase {run['phase']!r}")
            continue
        by_model[group(run)].append(run)
        names.append(path.stem)
    if not by_model:
        raise SystemExit(f"no runs matching {args.runs}.json in {args.runs_dir}; run python -m "
                         "benchmarks.rerank_quality --name rerank_quality_<model>_s<seed>")
    summary = {model: summarise(runs) for model, runs in by_model.items()}
    fmt = lambda p: f"{p[0]:.4f} ± {p[1]:.4f}"  # noqa: E731
    table = markdown_table(
        ["LLM", "seeds", "hybrid", "hybrid + trained LLM (blend)", "LLM alone", "gain",
         "blend / hybrid", "blend w", "position bias top-1", "training min", "warm p50 ms",
         "default on?"],
        [[m, len(s["seeds"]), fmt(s["hybrid"]), fmt(s["blended"]), fmt(s["alone"]),
          fmt(s["gain"]), round(s["ratio"], 3), s["weights"],
          [round(x, 2) for x in s["position_bias_top1"]],
          [round(x) for x in s["train_minutes"]], [round(x) for x in s["warm_p50_ms"]],
          "yes" if s["default_on"] else "no"] for m, s in summary.items()])
    users = {s["test_users"] for s in summary.values()}
    md = (f"# Trained listwise re-ranker on MovieLens-100k test ({'/'.join(map(str, users))} "
          f"users): NDCG@10 over seeds\n\n{table}\n\nRule: on by default only with 3+ seeds "
          "and a blended gain over the hybrid above two standard errors. Per run: "
          "`benchmarks/results/rerank_quality_<model>_s<seed>.md`. The target was "
          "blend / hybrid >= 1.07.")
    write("rerank_summary", {"models": summary}, md, provenance=provenance(by_model, names))
    plot(summary)
    print(md)


def plot(summary: dict[str, Any]) -> None:
    """Bars of hybrid, blended and LLM-alone NDCG@10 per model, with their standard errors."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.25
    for i, key in enumerate(("hybrid", "blended", "alone")):
        xs = [j + i * width for j in range(len(summary))]
        ax.bar(xs, [s[key][0] for s in summary.values()], width,
               yerr=[s[key][1] for s in summary.values()], label=key)
    ax.set_xticks([j + width for j in range(len(summary))], list(summary), fontsize=7)
    ax.set_ylabel("test NDCG@10")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "rerank_summary.png", dpi=120)


if __name__ == "__main__":
    main()
