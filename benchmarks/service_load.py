"""The service under concurrent clients: QPS and p50/p95/p99 at 1, 8 and 32 clients, against
the raw parts measured in the same run.

    python -m benchmarks.service_load [--levels 1,8,32] [--seconds 20] [--quick]

A real `mmrec serve` subprocess on loopback (``benchmarks.soak.server``: CLIP off, re-rank
off, the packaged MiniLM) holds the 1,682 MovieLens-100k films and the first ratings of
the 943 users (``benchmarks.soak.data``). This process is the client: for Search, then
Recommend, ``N`` closed-loop client threads (one gRPC channel each; the soak's request
shapes: titles, genre phrases and free text with filters for Search, known users, new
visitors and more-like-these for Recommend) send requests for ``--seconds`` per level.

Then the server stops and this process opens the same data dir in-process and times the
raw parts, single-threaded: the query encoder's forward pass alone and on a batch of 32
(``encode_queries``), the store's own time for the query (``EdgeStore.raw_query_seconds``,
below every line of mmrec code), and ``Engine.search`` / ``Engine.recommend`` without gRPC.
Reported: per level QPS and client-side percentiles; the ratio of the service's
single-client p50 to the raw parts' p50; and the saturation QPS (the best level) against
the raw parts' batched rate, 1 / (batch encode time per query + raw store time), on one
thread: the service may use both cores, so a ratio above 1 is possible and says so.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.report import RESULTS, from_engine, markdown_table, write
from benchmarks.soak.data import SoakData, load_data
from benchmarks.soak.load import FREE_QUERIES, Stream, all_calls, run_streams
from benchmarks.soak.run import setup_seconds, setup_server
from benchmarks.soak.server import start_server, write_config
from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.domain import EngineInfo, HybridQuery, RecommendRequest, SearchRequest
from engine.runtime.engine import Engine
from engine.store import EdgeStore

RPCS = ("Search", "Recommend")
BATCH = 32


def level(target: str, data: SoakData, rpc: str, clients: int, seconds: float
          ) -> dict[str, Any]:
    """One load level: ``clients`` closed-loop threads sending ``rpc`` for ``seconds``."""
    streams, wall = run_streams(target, data, concurrency=clients, seconds=seconds,
                                rerank_share=0.0, timeout=30.0, tick=_quiet,
                                mix={rpc: 1.0})
    calls = all_calls(streams)
    ok = [c.ms for c in calls if c.code == "OK"]
    errors = len(calls) - len(ok)
    pct = (lambda q: float(np.percentile(ok, q))) if ok else (lambda q: float("nan"))
    return {"rpc": rpc, "clients": clients, "requests": len(calls), "errors": errors,
            "qps": len(ok) / wall, "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99)}


def _quiet(streams: list[Stream], elapsed: float) -> None:
    """run_streams' per-second hook: the level's progress is printed when it ends."""


def raw_parts(config: EngineConfig, data: SoakData, queries: int) -> dict[str, float]:
    """Single-thread raw timings on the served data dir (the server has stopped)."""
    engine = Engine.from_config(config)
    try:
        store = engine.store
        if not isinstance(store, EdgeStore):
            raise SystemExit("the raw-parts timing needs the embedded store (unset store.url)")
        texts = [data.films[i % len(data.films)].title if i % 2 else
                 FREE_QUERIES[i % len(FREE_QUERIES)] for i in range(queries)]
        encode, store_s, search, recommend = [], [], [], []
        for text in texts[:3] + texts:  # the first three warm up and are timed again
            started = time.perf_counter()
            encoded = engine.vectoriser.query(text, None)
            encode.append(time.perf_counter() - started)
            request = SearchRequest(text=text, image=None, top_k=10, tenant="default")
            channels = engine.pipeline.retriever.channels(encoded, request, 10)
            store_s.append(store.raw_query_seconds(
                HybridQuery(channels=channels, limit=10, tenant="default")))
            started = time.perf_counter()
            engine.search(request)
            search.append(time.perf_counter() - started)
        for user in data.users[: queries + 3]:
            started = time.perf_counter()
            engine.recommend(RecommendRequest(tenant="default", user_id=user, top_k=10))
            recommend.append(time.perf_counter() - started)
        batch = texts[:BATCH]
        engine.text.encode_queries(batch)
        started = time.perf_counter()
        engine.text.encode_queries(batch)
        batch_s = (time.perf_counter() - started) / len(batch)
    finally:
        engine.close()
    med = lambda xs: statistics.median(xs[3:]) * 1000  # noqa: E731  (ms, warm-up dropped)
    return {"encode_p50_ms": med(encode), "store_p50_ms": med(store_s),
            "raw_p50_ms": med([a + b for a, b in zip(encode, store_s, strict=True)]),
            "engine_search_p50_ms": med(search), "engine_recommend_p50_ms": med(recommend),
            "encode_batched_ms_per_query": batch_s * 1000,
            "raw_batched_qps": 1000 / (batch_s * 1000 + med(store_s))}


RAW_PARTS_S = 25.0
"""About how long the in-process raw-parts measurement takes on 2 busy cores."""


def expected_seconds(films: int, levels: int, seconds: float) -> float:
    """The run's expected wall time: setup, raw parts, then each level's Search and Recommend."""
    return setup_seconds(films) + RAW_PARTS_S + 2 * levels * seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0, help="load per level")
    parser.add_argument("--text-model", default=EngineConfig().text_encoder.model)
    parser.add_argument("--quick", action="store_true", help="6 s per level, 300 films")
    args = parser.parse_args()
    seconds = 6.0 if args.quick else args.seconds
    data = load_data(items=300 if args.quick else 0, users=200 if args.quick else 0)
    print(f"service_load: {len(data.films):,} films, {len(data.ratings):,} users; levels "
          f"{args.levels} for {seconds:.0f} s each, {RPCS}; expected ~"
          f"{expected_seconds(len(data.films), len(args.levels), seconds) / 60:.0f} min",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="mmrec-service-") as work:
        folder = Path(work)
        config_path = write_config(folder / "serve.toml", text_model=args.text_model,
                                   llm=False, optimize_after=1_000_000)
        server = start_server(config_path, folder / "data", folder / "serve.log")
        try:
            setup_server(server, data)
            with MmrecClient(server.target, timeout=60) as client:
                client.search(text="warm up", top_k=10)
                info = client.info()  # what the server loaded, for the provenance
            rows = []
            for rpc in RPCS:
                for clients in args.levels:
                    rows.append(level(server.target, data, rpc, clients, seconds))
                    print(f"  {rpc} x{clients}: {rows[-1]['qps']:.1f} req/s, p50 "
                          f"{rows[-1]['p50_ms']:.1f} ms, p99 {rows[-1]['p99_ms']:.1f} ms, "
                          f"{rows[-1]['errors']} errors", flush=True)
        finally:
            server.stop()
        config = EngineConfig.load(config_path, store={"data_dir": folder / "data"})
        raw = raw_parts(config, data, 20 if args.quick else 60)
    report(rows, raw, data, seconds, args, info)


def report(rows: list[dict[str, Any]], raw: dict[str, float], data: SoakData, seconds: float,
           args: argparse.Namespace, info: EngineInfo) -> None:
    """JSON, Markdown and the QPS/latency plot; ``info`` is the server's (its models, store
    and device; the raw parts ran in this process on the same config and data dir)."""
    search = [r for r in rows if r["rpc"] == "Search"]
    single = next((r for r in search if r["clients"] == 1), search[0])
    best = max(search, key=lambda r: r["qps"])
    ratios = {"service_p50_over_raw_p50": single["p50_ms"] / raw["raw_p50_ms"],
              "saturation_qps_over_raw_batched_qps": best["qps"] / raw["raw_batched_qps"]}
    table = markdown_table(["RPC", "clients", "requests", "errors", "QPS", "p50 ms", "p95 ms",
                            "p99 ms"],
                           [[r["rpc"], r["clients"], r["requests"], r["errors"],
                             round(r["qps"], 1), round(r["p50_ms"], 1), round(r["p95_ms"], 1),
                             round(r["p99_ms"], 1)] for r in rows])
    md = (f"# Service under concurrent clients ({len(data.films):,} films, CLIP off, no "
          f"re-rank)\n\nA separate client process on loopback, {seconds:.0f} s per level, "
          f"text encoder {args.text_model}.\n\n{table}\n\nRaw parts in the same run (one "
          f"thread, in-process): encode p50 {raw['encode_p50_ms']:.1f} ms, store "
          f"{raw['store_p50_ms']:.2f} ms, sum {raw['raw_p50_ms']:.1f} ms; Engine.search "
          f"{raw['engine_search_p50_ms']:.1f} ms, Engine.recommend "
          f"{raw['engine_recommend_p50_ms']:.1f} ms; batched encode "
          f"{raw['encode_batched_ms_per_query']:.1f} ms a query (batch {BATCH}), so the raw "
          f"parts' batched rate is {raw['raw_batched_qps']:.0f} queries/s on one thread.\n\n"
          f"Search, one client: service p50 / raw parts p50 = "
          f"{ratios['service_p50_over_raw_p50']:.2f}. Saturation (best level, "
          f"{best['clients']} clients) {best['qps']:.1f} req/s = "
          f"{ratios['saturation_qps_over_raw_batched_qps']:.2f} x the raw batched rate.")
    write("service_load", {"rows": rows, "raw_parts": raw, "ratios": ratios,
                           "films": len(data.films), "seconds_per_level": seconds,
                           "text_model": args.text_model}, md,
          provenance=from_engine(info, data.describe()))
    plot(rows)
    print(md)


def plot(rows: list[dict[str, Any]]) -> None:
    """QPS and p99 against clients, per RPC."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for rpc in RPCS:
        mine = [r for r in rows if r["rpc"] == rpc]
        left.plot([r["clients"] for r in mine], [r["qps"] for r in mine], marker="o", label=rpc)
        right.plot([r["clients"] for r in mine], [r["p99_ms"] for r in mine], marker="o",
                   label=rpc)
    for ax, label in ((left, "requests/s"), (right, "p99 ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "service_load.png", dpi=120)


if __name__ == "__main__":
    main()
