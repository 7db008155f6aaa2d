"""Reason quality on MovieLens-100k: how often the LLM's "why you'll like it" sentence is
rejected (and why), how varied the kept sentences are, and how long each takes.

The real engine (``benchmarks.recommend.engine_runs.EngineHarness``: the films indexed with
MiniLM, every training and validation interaction recorded as live events, the
co-occurrence channel fitted) recommends ``--top-k`` films with explanations to
``--users`` users drawn at random (seed 0). For each result the facts are rebuilt from
the explanation (``engine.rerank.facts.facts_of``: the item, the history items behind it
with their titles, the genres they share) and the real SmolLM2-135M-Instruct writes a
sentence from them (``engine.rerank.ReasonWriter``, greedy), which the faithfulness checks
keep or replace by the plain sentence. Distinct-2 is reported for the kept sentences
(corpus level: distinct bigrams over all; and the mean per sentence); latency is the wall
time of one ``ReasonWriter.write`` (generation and checks), one sentence at a time, on the
CPU threads torch was given. The load average is recorded: on a shared machine it inflates
the latencies.

    python -m benchmarks.reason_quality [--users 100] [--top-k 10] [--model PATH] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from benchmarks.recommend.engine_runs import EngineHarness
from benchmarks.recommend.protocol import load_movielens, protocol_split
from benchmarks.report import RESULTS, device_name, from_engine, markdown_table, real_weights, write
from engine.domain import DEFAULT_TENANT, RecommendRequest
from engine.rerank.facts import facts_of
from engine.rerank.faithfulness import (
    LLM,
    MIN_DISTINCT_2,
    REJECTIONS,
    Reason,
    corpus_distinct_2,
    distinct_2,
    rejection_shares,
)
from engine.rerank.loading import RerankerSpec, default_cache_dir, load_causal_lm
from engine.rerank.reasons import ReasonWriter, sentence_start

WORK = Path(".mmrec/bench/reasons")
DEFAULT_MODEL = ".mmrec/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def measure(harness: EngineHarness, writer: ReasonWriter, users: list[int], top_k: int
            ) -> list[dict[str, Any]]:
    """One row per (user, recommended film): facts, the LLM's draft, the kept sentence, time."""
    data, rows = harness.split.data, []
    for u in tqdm(users, desc="reasons", unit="user"):
        user = f"u{data.user_ids[u]}"
        result = harness.engine.recommend(RecommendRequest(
            tenant=DEFAULT_TENANT, user_id=user, top_k=top_k, explain=True))
        for hit, explanation in zip(result.hits, result.explanations or [], strict=True):
            facts = facts_of(hit.record, explanation)
            started = time.perf_counter()
            reason = writer.write(facts)
            seconds = time.perf_counter() - started
            start = sentence_start(facts)
            own = reason.draft[len(start):] if reason.draft.startswith(start) else reason.draft
            rows.append({"user": user, "item": hit.record.id, "title": facts.title,
                         "liked": facts.liked, "shared": facts.shared,
                         "plain": explanation.reason, "draft": reason.draft,
                         "continuation": own, "reason": reason.text, "source": reason.source,
                         "rejected": reason.rejected, "seconds": seconds})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rejection shares by rule, distinct-2 of kept sentences and drafts, latency."""
    reasons = [Reason(r["reason"], r["source"], r["rejected"], r["draft"]) for r in rows]
    kept = [r["reason"] for r in rows if r["source"] == LLM]
    own = [r["continuation"] for r in rows if r["source"] == LLM]
    drafts = [r["draft"] for r in rows if r["draft"]]
    ms = np.array([r["seconds"] * 1000 for r in rows])
    return {
        "sentences": len(rows),
        "with_history_items": sum(bool(r["liked"]) for r in rows),
        "rejected": rejection_shares(reasons),
        "kept": len(kept),
        "distinct_2_kept_corpus": corpus_distinct_2(kept),
        "distinct_2_kept_mean": statistics.fmean(map(distinct_2, kept)) if kept else None,
        "distinct_2_kept_continuations_corpus": corpus_distinct_2(own),
        "distinct_2_plain_corpus": corpus_distinct_2(r["plain"] for r in rows),
        "common_openings": Counter(" ".join(c.split()[:4]) for c in own).most_common(5),
        "distinct_2_drafts_corpus": corpus_distinct_2(drafts),
        "distinct_2_drafts_mean": statistics.fmean(map(distinct_2, drafts)) if drafts else None,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                       "mean": float(ms.mean()), "max": float(ms.max())},
        "distinct_kept_sentences": len(set(kept)),
    }


def examples(rows: list[dict[str, Any]], per_kind: int = 3) -> dict[str, list[dict[str, str]]]:
    """A few kept sentences and a few rejected drafts of each rule, for the report."""
    out: dict[str, list[dict[str, str]]] = {}
    for kind in ("", *REJECTIONS):
        chosen = [r for r in rows if r["rejected"] == kind][:per_kind]
        out[kind or "kept"] = [{"title": r["title"], "draft": r["draft"], "reason": r["reason"]}
                               for r in chosen]
    return out


def report(summary: dict[str, Any], samples: dict[str, list[dict[str, str]]],
           args: argparse.Namespace, load: dict[str, list[float]], seconds: float) -> str:
    """The Markdown report (also printed)."""
    shares = summary["rejected"]
    table = markdown_table(["rule", "share of sentences"],
                           [[k, f"{v:.1%}"] for k, v in shares.items()])
    lat = summary["latency_ms"]
    lines = [
        "# Reason quality: MovieLens-100k, SmolLM2-135M-Instruct, faithfulness checks\n",
        f"{args.users} users (seed {args.seed}) x top {args.top_k} recommendations = "
        f"{summary['sentences']} sentences ({summary['with_history_items']} with history items "
        f"behind them); model `{args.model}`, greedy, at most 32 new tokens after the seeded "
        f"start; distinct-2 threshold {MIN_DISTINCT_2}.\n",
        "## Rejected, by rule\n", table, "",
        f"Kept: {summary['kept']} LLM sentences ({summary['distinct_kept_sentences']} distinct). "
        f"Distinct-2 of kept sentences: corpus {summary['distinct_2_kept_corpus']:.3f}, mean "
        f"per sentence {summary['distinct_2_kept_mean'] or 0:.3f}; of the LLM's own words "
        f"(the kept sentences without the seeded start): corpus "
        f"{summary['distinct_2_kept_continuations_corpus']:.3f}; of all drafts: corpus "
        f"{summary['distinct_2_drafts_corpus']:.3f}, mean "
        f"{summary['distinct_2_drafts_mean'] or 0:.3f}; of the plain sentences (a template): "
        f"corpus {summary['distinct_2_plain_corpus']:.3f}. Most common openings of the LLM's "
        "own words: " + "; ".join(f"{text!r} x{n}" for text, n in summary["common_openings"])
        + ".\n",
        f"Latency per sentence: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, max "
        f"{lat['max']:.0f} ms (one at a time on {torch.get_num_threads()} torch threads; load "
        f"average before {load['before']}, after {load['after']}: a shared machine inflates "
        "these).\n",
        "## Examples\n",
    ]
    for kind, chosen in samples.items():
        for s in chosen:
            shown = s["draft"] if kind != "kept" else s["reason"]
            lines.append(f"- **{kind}** ({s['title']}): {shown!r}"
                         + (f" -> {s['reason']!r}" if kind != "kept" else ""))
    lines.append(f"\nTotal {seconds / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Rejection shares and the latency histogram (``reason_quality.png``)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    shares = {k: v for k, v in summary["rejected"].items() if k != "any"}
    left.bar(["kept", *shares], [1 - summary["rejected"]["any"], *shares.values()])
    left.set_ylabel("share of sentences")
    left.set_title("LLM sentence kept or rejected (by rule)")
    left.tick_params(axis="x", labelsize=8)
    right.hist([r["seconds"] * 1000 for r in rows], bins=30)
    right.set_xlabel("ms per sentence")
    right.set_title("latency per sentence")
    fig.tight_layout()
    fig.savefig(RESULTS / "reason_quality.png", dpi=120)


def _devices(llm: str, engine: str) -> str:
    """One device, or the LLM's and the engine's when they differ."""
    return llm if llm == engine else f"{llm} (the LLM); {engine} (the engine)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="The LLM (.gguf or folder).")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default). On a busy machine 1 is "
                             "several times faster than 2: measured 2.3 s against 10-22 s per "
                             "sentence at load average 8.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    split = protocol_split(load_movielens())
    spec = RerankerSpec(model=args.model, cache_dir=default_cache_dir(WORK, args.model))
    model, tokenizer, name = load_causal_lm(spec)
    writer = ReasonWriter(model, tokenizer)
    harness = EngineHarness(split, WORK / "engine", load_reranker=False)
    try:
        harness.advance_to_test()  # the history holds every interaction but the last
        rng = np.random.default_rng(args.seed)
        users = sorted(rng.choice(split.n_users, min(args.users, split.n_users),
                                  replace=False).tolist())
        load = {"before": [round(x, 1) for x in os.getloadavg()]}
        rows = measure(harness, writer, users, args.top_k)
        load["after"] = [round(x, 1) for x in os.getloadavg()]
        info = harness.engine.info()
    finally:
        harness.close()
    summary = summarise(rows)
    samples = examples(rows)
    text = report(summary, samples, args, load, time.perf_counter() - started)
    print(text)
    write("reason_quality", {"settings": {**vars(args), "model_name": name,
                                          "min_distinct_2": MIN_DISTINCT_2},
                             "load_average": load, "summary": summary,
                             "rejections": dict(Counter(r["rejected"] for r in rows)),
                             "examples": samples, "rows": rows}, text,
          provenance=from_engine(
              info, f"{split.describe()}, test stage; {len(users)} users (seed {args.seed}) x "
              f"top {args.top_k}", {"reason writer LLM": real_weights(f"{name}, greedy")},
              device=_devices(device_name(spec.device), device_name(info.device))))
    plot(summary, rows)


if __name__ == "__main__":
    main()
