"""Recommend latency over gRPC on MovieLens-100k, and the time from an event to a new list.

The engine holds the 1,682 films, the 943 users' profiles (every training
rating recorded as an event), a SASRec behaviour model and the co-occurrence
channel. Through a real gRPC server on loopback it measures:

* Recommend p50/p95 without re-ranking and with LLM re-ranking of the top 20,
  under the default budget (1.5 s) and under one large enough for all 20,
  with how many candidates the LLM actually scored;
* event to changed recommendation: RecordEvents with one new event, then
  Recommend, timed together, and whether the list changed;
* the raw parts for the same request (profile read, channel encoders, one
  Qdrant query), so the service's overhead is a ratio measured in one run.

SASRec is trained for a few epochs only: its cost at request time does not
depend on how well it was trained (quality is ``benchmarks/recommend_quality.py``).

    python -m benchmarks.recommend_latency [--requests 300] [--rerank-requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.recommend.engine_runs import EngineHarness, item_id
from benchmarks.recommend.protocol import load_movielens, protocol_split
from benchmarks.report import RESULTS, Provenance, from_engine, markdown_table, write
from engine.behaviour.sequential import SequentialSettings, train_sequential
from engine.client import MmrecClient
from engine.domain import DEFAULT_TENANT, Event, HybridQuery, ItemFilter, RecommendRequest
from engine.service import start_server

WORK = Path(".mmrec/bench/recommend-latency")
BUDGETS = (1500, 20_000)
"""The default re-rank budget, and one large enough for the whole top 20 on this CPU."""


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p95 in milliseconds."""
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def raw_parts_ms(harness: EngineHarness, user: str) -> float:
    """The same recommendation from the parts: profile, channel queries, one Qdrant call."""
    engine, recommender = harness.engine, harness.engine.recommender
    started = time.perf_counter()
    request = RecommendRequest(tenant=DEFAULT_TENANT, user_id=user, top_k=10)
    examples = recommender.examples(request)
    channels = recommender.channels.build(examples, request, "profile", 10)
    settings = recommender.settings_for(DEFAULT_TENANT)
    engine.store.hybrid_search(HybridQuery(channels=channels, limit=10, tenant=DEFAULT_TENANT,
                                           fusion=settings.fusion, rrf_k=settings.rrf_k,
                                           filter=ItemFilter(exclude_ids=tuple(examples.seen))))
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rerank-requests", type=int, default=30)
    parser.add_argument("--event-trials", type=int, default=50)
    args = parser.parse_args()
    split = protocol_split(load_movielens())
    harness = EngineHarness(split, WORK, load_reranker=args.rerank_requests > 0)
    harness.advance_to_test()
    ids = [item_id(raw) for raw in split.data.item_ids]
    settings = SequentialSettings(epochs=3, batch_size=64)
    model = train_sequential([[ids[i] for i in h] for h in split.history("test")], settings,
                             progress=True)
    harness.use_model(model)
    engine = harness.engine
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    running = asyncio.run_coroutine_threadsafe(start_server(engine, harness.config, port=0),
                                               loop).result(60)
    users = [f"u{u}" for u in split.data.user_ids]
    plain, raw, event_ms, changed = [], [], [], 0
    reranked: dict[int, list[float]] = {budget: [] for budget in BUDGETS}
    scored: dict[int, list[int]] = {budget: [] for budget in BUDGETS}
    with MmrecClient(f"127.0.0.1:{running.port}", timeout=120) as client:
        for user in users[:5]:
            client.recommend(user_id=user, top_k=10)
        for i in range(args.requests):
            user = users[i % len(users)]
            client.recommend(user_id=user, top_k=10)               # warm this user's pages
            for side in ((0, 1) if i % 2 else (1, 0)):
                if side == 0:
                    started = time.perf_counter()
                    client.recommend(user_id=user, top_k=10)
                    plain.append((time.perf_counter() - started) * 1000)
                else:
                    raw.append(raw_parts_ms(harness, user))
        if engine.recommender.rerank_for(DEFAULT_TENANT).reranker is not None:
            for budget in BUDGETS:
                for user in users[:args.rerank_requests]:
                    started = time.perf_counter()
                    reply = client.recommend(user_id=user, top_k=10, rerank=True,
                                             budget_ms=budget)
                    reranked[budget].append((time.perf_counter() - started) * 1000)
                    scored[budget].append(reply.reranked)
        for user in users[-args.event_trials:]:
            before = [h.record.id for h in client.recommend(user_id=user, top_k=10).hits]
            started = time.perf_counter()
            client.record_events([Event(user, before[0], "purchase", 0.0, time.time())])
            after = [h.record.id for h in client.recommend(user_id=user, top_k=10).hits]
            event_ms.append((time.perf_counter() - started) * 1000)
            changed += after[:9] != before[1:10]   # more moved than the purchased item leaving
    asyncio.run_coroutine_threadsafe(running.stop(1), loop).result(30)
    made = from_engine(engine.info(), f"{split.describe()}, test-stage histories", {
        "SASRec": f"SASRec trained here for {settings.epochs} epochs (real weights, barely "
                  "trained: its cost at request time does not depend on it)"})
    harness.close()
    report(plain, raw, reranked, scored, event_ms, changed, made)


def report(plain: list[float], raw: list[float], reranked: dict[int, list[float]],
           scored: dict[int, list[int]], event_ms: list[float], changed: int,
           provenance: Provenance) -> None:
    """Print and save the table, JSON and a latency histogram."""
    rows = [["Recommend, no re-rank (gRPC)", *percentiles(plain), len(plain)],
            ["raw parts (profile + encoders + one Qdrant query)", *percentiles(raw), len(raw)],
            ["event -> changed recommendation (RecordEvents + Recommend)",
             *percentiles(event_ms), len(event_ms)]]
    for budget, times in reranked.items():
        if times:
            rows.insert(1, [f"Recommend + LLM re-rank of top 20, budget {budget} ms (re-ranked "
                            f"{np.mean(scored[budget]):.1f} of 20 on average)",
                            *percentiles(times), len(times)])
    table = markdown_table(["what", "p50 ms", "p95 ms", "requests"],
                           [[r[0], round(r[1], 1), round(r[2], 1), r[3]] for r in rows])
    ratio = percentiles(plain)[0] / percentiles(raw)[0]
    text = (f"# Recommend latency: MovieLens-100k (1,682 films, 943 users), CPU\n\n{table}\n\n"
            f"Service / raw parts at p50: {ratio:.2f}. After a purchase of the top item, the "
            f"rest of the list changed (not just the item leaving) for {changed} of "
            f"{len(event_ms)} users.\n")
    print(text)
    data: dict[str, Any] = {"rows": rows, "ratio_p50": ratio, "changed": changed,
                            "event_trials": len(event_ms),
                            "reranked_per_budget": {b: float(np.mean(v)) if v else 0.0
                                                    for b, v in scored.items()}}
    write("recommend_latency", data, text, provenance=provenance)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(plain, bins=40, alpha=0.7, label="Recommend")
    ax.hist(raw, bins=40, alpha=0.7, label="raw parts")
    ax.hist(event_ms, bins=40, alpha=0.7, label="event -> new list")
    ax.set_xlabel("milliseconds")
    ax.set_title("Recommend latency over gRPC (MovieLens-100k, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "recommend_latency.png", dpi=120)


if __name__ == "__main__":
    main()
