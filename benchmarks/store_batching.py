"""Store-query batching: N hybrid searches in one store request against N requests.

    python -m benchmarks.store_batching [--size 10000] [--searches 32] [--repeats 5] [--quick]

The service sends the searches that arrive together to the store as one request
(``engine.store.batched``, ``[query_batching] store``). This measures what that buys on the
embedded store, on its raw path (``EdgeStore``'s batched request for already-validated
plans, so planning and gRPC are not in the clock): a catalog of the fused item layout
(``benchmarks.synthetic_store``: CLIP-sized, text and fused dense vectors and a BM25 channel,
the shape of mmrec's own items) gets the same ``--searches`` hybrid queries

- one request each, on one thread (what every search costs without batching);
- in one request (what a full batch costs per search);
- one request each from two threads (whether concurrent requests share the cores instead);
- two requests of half each from two threads.

Each is repeated ``--repeats`` times in alternation; medians are reported, per search.
The ratio ``one request / one each`` says what batching can save at most; the default follows
the service measured end to end with it on and off (``benchmarks.service_load``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from tqdm import tqdm

from benchmarks import synthetic_store as synth
from benchmarks.report import RESULTS, markdown_table
from engine.store import EdgeStore
from engine.store.hybrid import HybridPlan, plan_hybrid

WAYS = ("one request each", "one request for all", "2 threads, one request each",
        "2 threads, half each")


def build(root: Path, size: int) -> EdgeStore:
    """A fused-layout catalog of ``size`` items with its HNSW built."""
    store = EdgeStore(root, synth.schema("fused"))
    with tqdm(total=size, desc=f"index fused {size:,}", unit="item") as bar:
        for start, vectors in synth.blocks(size):
            for offset in range(0, len(vectors), 1000):
                batch = synth.items("fused", start + offset, vectors[offset:offset + 1000])
                store.upsert(batch)
                bar.update(len(batch))
    store.flush()
    store.optimize(wait=True)
    return store


def ways(store: EdgeStore, plans: list[HybridPlan], pool: ThreadPoolExecutor
         ) -> dict[str, Callable[[], object]]:
    """Each way of sending ``plans`` to the store, as a call."""
    ask = store._search_plans  # the backend's batched request; plans are already validated
    half = len(plans) // 2
    return {
        WAYS[0]: lambda: [ask([p]) for p in plans],
        WAYS[1]: lambda: ask(plans),
        WAYS[2]: lambda: list(pool.map(lambda p: ask([p]), plans)),
        WAYS[3]: lambda: list(pool.map(ask, [plans[:half], plans[half:]])),
    }


def measure(size: int, searches: int, repeats: int, work: Path) -> dict[str, Any]:
    """Milliseconds per search of each way (median over the repeats)."""
    store = build(work / "store", size)
    try:
        queries = [synth.query("fused", v, t) for v, t in zip(
            synth.query_vectors(searches), synth.query_texts(searches), strict=True)]
        plans = [plan for plan in (plan_hybrid(store.schema, q) for q in queries) if plan]
        with ThreadPoolExecutor(2) as pool:
            calls = ways(store, plans, pool)
            for call in calls.values():  # warm-up
                call()
            seconds: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(repeats):
                for name, call in calls.items():
                    started = time.perf_counter()
                    call()
                    seconds[name].append(time.perf_counter() - started)
    finally:
        store.close()
    ms = {name: statistics.median(s) * 1000 / len(plans) for name, s in seconds.items()}
    return {"size": size, "searches": len(plans), "repeats": repeats, "ms_per_search": ms,
            "batched_over_alone": ms[WAYS[1]] / ms[WAYS[0]]}


def markdown(result: dict[str, Any]) -> str:
    """The report."""
    ms = result["ms_per_search"]
    rows = [[name, f"{value:.2f}", f"{value / ms[WAYS[0]]:.2f}"] for name, value in ms.items()]
    verdict = ("one request is cheaper on the raw path" if result["batched_over_alone"] < 1
               else "one request is not cheaper even on the raw path")
    return (f"# Store-query batching on the embedded store ({result['size']:,} fused items)\n\n"
            f"{result['searches']} hybrid searches (fused, clip, text and lexical channels, "
            f"top 10), medians of {result['repeats']} alternating repeats, milliseconds per "
            f"search.\n\n{markdown_table(['way', 'ms per search', 'x one each'], rows)}\n\n"
            f"One request for all / one request each = {result['batched_over_alone']:.2f}: "
            f"{verdict}. The default (`[query_batching] store`) follows the service "
            "measured with it on and off (`service_load_store_batching_{on,off}.md`), not "
            "this raw figure.")


def plot(result: dict[str, Any], path: Path) -> None:
    """Bars of milliseconds per search for each way."""
    ms = result["ms_per_search"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(list(ms), list(ms.values()), color="#4a7ab7")
    ax.invert_yaxis()
    ax.set_xlabel("ms per search (median)")
    ax.set_title(f"Store-query batching, {result['size']:,} fused items, "
                 f"{result['searches']} searches")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Command line: ``python -m benchmarks.store_batching``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3,000 items, 3 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    size, repeats = (3_000, 3) if args.quick else (args.size, args.repeats)
    print(f"store_batching: {size:,} fused items, {args.searches} searches, {repeats} repeats; "
          f"expected ~{1 + size / 5_000:.0f} min on 2 cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="mmrec-store-batching-") as work:
        result = measure(size, args.searches, repeats, Path(work))
    synth.save(args.out, "store_batching", result, markdown(result),
               provenance=synth.store_provenance({"fused": [size]}))
    plot(result, args.out / "store_batching.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
