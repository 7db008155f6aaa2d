"""Search latency at scale, and the service's overhead over the raw parts it calls.

    python -m benchmarks.search_latency [--sizes 10000 100000] [--queries 40]

For each size, a store of synthetic items (synthetic vectors are for scale
only, never for quality): random unit vectors in the ``text`` and ``fused`` channels (the
layout of a CLIP-off engine) and real BM25 vectors of synthetic titles drawn
from MovieLens and Tux Paint words, HNSW-built. Then, in one run, per query:
- **service**: a gRPC Search over loopback (no re-rank), timed by the client;
- **raw parts**: the same query's encoder forward passes (MiniLM + BM25) plus
  the raw Qdrant ``query_batch`` the store issues (timed on the shard itself);
- **service with re-rank**: SmolLM2 over the top 20, default budget.
Reported: p50/p95 of each and the ratio service / raw parts (target <= 1.3).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.report import (
    RESULTS,
    Provenance,
    device_name,
    engine_models,
    markdown_table,
    store_name,
    write,
)
from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.domain import (
    EngineInfo,
    HybridQuery,
    ItemRecord,
    ModelUnavailable,
    SearchRequest,
    StoredItem,
)
from engine.rerank import default_cache_dir
from engine.rerank.registry import resolve_model
from engine.runtime.engine import Engine
from engine.service import start_server
from engine.store import EdgeStore
from indexers.datasets import DATASETS, movielens_dir, movielens_items, stamps_dir, tuxpaint_items

WORK = Path(".mmrec/bench")
QUERIES = ["space adventure", "a cute cat", "romantic comedy", "red fire truck", "guitar",
           "horror film", "fresh fruit", "winter holiday", "war story", "a toy rocket",
           "birds", "ocean", "detective mystery", "family film", "robots", "music"]


def vocabulary() -> list[str]:
    words = [w.strip(".,:()'\"").lower() for r in movielens_items(movielens_dir())
             for w in r["title"].split()]
    words += [w.strip(".,").lower() for r in tuxpaint_items(stamps_dir() or DATASETS)
              for w in r["title"].split()]
    return sorted({w for w in words if len(w) > 2 and w.isalpha()})


def build(engine: Engine, size: int) -> float:
    """Fill the engine's store with ``size`` synthetic items and build HNSW; returns seconds."""
    rng = np.random.default_rng(size)
    words = vocabulary()
    picker = random.Random(size)
    dims = engine.fuser.dims
    for start in range(0, size, 2000):
        n = min(2000, size - start)
        text = rng.normal(size=(n, dims["text"])).astype(np.float32)
        fused = engine.fuser.fuse({"text": text})
        titles = [" ".join(picker.choices(words, k=picker.randint(2, 6))) for _ in range(n)]
        lexical = engine.lexical.encode_documents(titles)  # type: ignore[union-attr]
        engine.store.upsert([
            StoredItem(ItemRecord(id=f"s{start + i}", title=titles[i]),
                       {"fused": fused[i], "text": text[i] / np.linalg.norm(text[i]),
                        "lexical": lexical[i]})
            for i in range(n)])
    started = time.perf_counter()
    engine.store.optimize(wait=True)
    return time.perf_counter() - started


def raw_parts_ms(engine: Engine, query: str) -> float:
    """Encoder forward passes + qdrant-edge's own time for the same query (milliseconds).

    ``EdgeStore.raw_query_seconds`` times Qdrant itself, below every line of mmrec code.
    """
    started = time.perf_counter()
    encoded = engine.vectoriser.query(query, None)
    encode_s = time.perf_counter() - started
    request = SearchRequest(text=query, image=None, top_k=10, tenant="default")
    channels = engine.pipeline.retriever.channels(encoded, request, 10)
    store = engine.store
    if not isinstance(store, EdgeStore):
        raise SystemExit("the raw-parts timing needs the embedded store (unset store.url)")
    seconds = store.raw_query_seconds(HybridQuery(channels=channels, limit=10, tenant="default"))
    return (encode_s + seconds) * 1000


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def measure(size: int, queries: int, rerank_queries: int) -> tuple[dict[str, Any], EngineInfo]:
    """One size's row, and what its engine loaded (for the provenance)."""
    settings = EngineConfig().rerank
    try:  # a packaged model's file (per-user cache); its converted copy is shared under WORK
        gguf = resolve_model(settings.model, data_dir=WORK, models_dir=settings.models_path())
    except ModelUnavailable:
        gguf = settings.model  # the engine reports the LLM off, with the reason
    llm_cache = default_cache_dir(WORK, gguf)
    config = EngineConfig.load(
        clip={"enabled": False}, store={"data_dir": WORK / f"latency-{size}"},
        rerank={"model": str(llm_cache if llm_cache.is_dir() else gguf)},
        service={"port": 0})
    engine = Engine.from_config(config)
    build_s = 0.0
    if engine.store.count() != size:
        print(f"building {size:,} synthetic items ...", flush=True)
        build_s = build(engine, size)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    running = asyncio.run_coroutine_threadsafe(start_server(engine, config, port=0),
                                               loop).result(60)
    texts = [QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" {i}")
             for i in range(queries)]
    service, raw, reranked = [], [], []
    with MmrecClient(f"127.0.0.1:{running.port}") as client:
        for q in texts[:5]:
            client.search(text=q, top_k=10, rerank=False)
            raw_parts_ms(engine, q)
        for i, q in enumerate(texts):
            # Warm this query's pages first (the shard is memory-mapped), then time both
            # sides in alternating order, so neither always runs on the other's warm cache.
            client.search(text=q, top_k=10, rerank=False)
            for side in ((0, 1) if i % 2 else (1, 0)):
                if side == 0:
                    started = time.perf_counter()
                    client.search(text=q, top_k=10, rerank=False)
                    service.append((time.perf_counter() - started) * 1000)
                else:
                    raw.append(raw_parts_ms(engine, q))
        if engine.pipeline.rerank.reranker is not None:
            for q in texts[:rerank_queries]:
                started = time.perf_counter()
                client.search(text=q, top_k=10, rerank=True)
                reranked.append((time.perf_counter() - started) * 1000)
    asyncio.run_coroutine_threadsafe(running.stop(1), loop).result(30)
    info = engine.info()
    engine.close()
    s50, s95 = percentiles(service)
    r50, r95 = percentiles(raw)
    out = {"items": size, "hnsw_build_s": build_s, "service_p50_ms": s50, "service_p95_ms": s95,
           "raw_parts_p50_ms": r50, "raw_parts_p95_ms": r95, "ratio_p50": s50 / r50,
           "queries": queries}
    if reranked:
        out["rerank_p50_ms"], out["rerank_p95_ms"] = percentiles(reranked)
        out["rerank_queries"] = len(reranked)
        out["rerank_budget_ms"] = config.rerank.budget_ms
    print(out, flush=True)
    return out, info


def provenance(results: list[dict[str, Any]], infos: list[EngineInfo]) -> Provenance:
    """Synthetic items (random text vectors, real BM25 of titles), the engines' models (the
    text encoder encodes the queries only), store and device."""
    models: dict[str, str] = {}
    for info in infos:
        models.update(engine_models(info))
    if "text encoder" in models:
        models["text encoder"] += ", queries only (the items' text vectors are random draws)"
    sizes = ", ".join(f"{r['items']:,}" for r in results)
    data = (f"synthetic items at {sizes} items: random unit text vectors and BM25 vectors of "
            f"titles drawn from MovieLens-100k and Tux Paint words; {results[0]['queries']} "
            "queries")
    return Provenance(data, models, store_name(infos[0].store), device_name(infos[0].device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--rerank-queries", type=int, default=10)
    args = parser.parse_args()
    measured = [measure(size, args.queries, args.rerank_queries) for size in args.sizes]
    results, infos = [r for r, _ in measured], [i for _, i in measured]
    table = markdown_table(
        ["items", "service p50 ms", "service p95 ms", "raw parts p50 ms", "service / raw",
         "+ re-rank p50 ms", "+ re-rank p95 ms"],
        [[f"{r['items']:,}", round(r["service_p50_ms"], 1), round(r["service_p95_ms"], 1),
          round(r["raw_parts_p50_ms"], 1), round(r["ratio_p50"], 2),
          round(r.get("rerank_p50_ms", 0.0)), round(r.get("rerank_p95_ms", 0.0))]
         for r in results])
    text = ("# Search latency (CPU, MiniLM + BM25, CLIP off, synthetic items)\n\n"
            "Service: gRPC Search over loopback, no re-rank. Raw parts: the same query's "
            "encoder forward passes plus the raw Qdrant query_batch. Target: service / raw "
            "<= 1.3. Re-rank: SmolLM2-135M over the top 20 within the default budget.\n\n"
            f"{table}\n")
    print(text)
    write("search_latency", {"results": results}, text, provenance=provenance(results, infos))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['items']:,}" for r in results]
    xs = np.arange(len(results))
    ax.bar(xs - 0.2, [r["raw_parts_p50_ms"] for r in results], 0.4, label="raw parts p50")
    ax.bar(xs + 0.2, [r["service_p50_ms"] for r in results], 0.4, label="service p50")
    ax.set_xticks(xs, labels)
    ax.set_xlabel("items")
    ax.set_ylabel("ms")
    ax.legend()
    ax.set_title("mmrec search latency vs raw parts")
    fig.tight_layout()
    fig.savefig(RESULTS / "search_latency.png", dpi=120)


if __name__ == "__main__":
    main()
