"""The store benchmarks' worker processes: build a synthetic catalog, then serve queries.

Each step runs in a fresh process (``python -m benchmarks.store_worker build|serve
SPEC.json``), so one size's memory never pollutes another's and "RSS growth" is what
opening a data dir costs a serving process: RSS is read once the process has imported
everything and made its queries, and again after the store was opened and searched.
Everything goes through mmrec's own ``engine.store.EdgeStore``: upserts, the engine's
copy-and-swap HNSW build (``optimize(wait=True)``), ``hybrid_search``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import synthetic_store as synth
from engine.store import EdgeStore, Quantization

UPSERT_BATCH = 1000
WARMUP_QUERIES = 20


def run_worker(step: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``step`` ("build" or "serve") in a fresh process and return what it measured."""
    with tempfile.TemporaryDirectory() as scratch:
        spec_path, out = Path(scratch) / "spec.json", Path(scratch) / "out.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out)}))
        subprocess.run([sys.executable, "-m", "benchmarks.store_worker", step, str(spec_path)],
                       check=True)
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def memory() -> dict[str, int]:
    """This process's resident memory in bytes: all of it, anonymous, and file-backed
    (memory-mapped segments: the kernel may drop those pages under pressure)."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    found: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            found[fields[key]] = int(value.split()[0]) * 1024
    return found


def disk_bytes(root: Path) -> dict[str, int]:
    """Bytes the data dir takes on disk (allocated blocks) and its files' apparent size
    (Qdrant preallocates WAL and storage files, mostly sparse)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return {"allocated": sum(p.stat().st_blocks * 512 for p in files),
            "apparent": sum(p.stat().st_size for p in files),
            "quantized": sum(p.stat().st_size for p in files if p.name == "quantized.data")}


def _quantization(spec: dict[str, Any]) -> Quantization:
    """The spec's quantization (none by default)."""
    return Quantization(**spec.get("quantization", {}))


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """Upsert ``size`` items of ``layout`` into a new data dir and build HNSW; timings, disk."""
    layout, size, seed = spec["layout"], spec["size"], spec.get("seed", synth.SEED)
    root = Path(spec["dir"])
    store = EdgeStore(root, synth.schema(layout), quantization=_quantization(spec))
    prepare_s = upsert_s = 0.0
    try:
        with tqdm(total=size, desc=f"index {layout} {size:,}", unit="item") as bar:
            for start, vectors in synth.blocks(size, seed=seed):
                for offset in range(0, len(vectors), UPSERT_BATCH):
                    began = time.perf_counter()
                    batch = synth.items(layout, start + offset,
                                        vectors[offset:offset + UPSERT_BATCH], seed)
                    prepared = time.perf_counter()
                    store.upsert(batch)
                    prepare_s += prepared - began
                    upsert_s += time.perf_counter() - prepared
                    bar.update(len(batch))
        began = time.perf_counter()
        store.flush()
        store.optimize(wait=True)
        hnsw_s = time.perf_counter() - began
        info = store.info()
    finally:
        store.close()
    return {"upsert_s": upsert_s, "items_per_s": size / upsert_s, "prepare_s": prepare_s,
            "hnsw_build_s": hnsw_s, "shard": info, "disk": disk_bytes(root)}


def serve(spec: dict[str, Any]) -> dict[str, Any]:
    """Open the data dir once per ``hnsw_ef``, run the queries, time each; RSS growth of
    the first open (store opened, warmed up and searched)."""
    layout, count, seed = spec["layout"], spec["queries"], spec.get("seed", synth.SEED)
    vectors, texts = synth.query_vectors(count + WARMUP_QUERIES, seed=seed), synth.query_texts(
        count + WARMUP_QUERIES, seed)
    queries = [synth.query(layout, v, t) for v, t in zip(vectors, texts, strict=True)]
    before, after, runs = memory(), None, []
    for ef in tqdm(spec["hnsw_efs"], desc=f"serve {layout} {spec['size']:,}", unit="ef"):
        store = EdgeStore(Path(spec["dir"]), synth.schema(layout), hnsw_ef=ef,
                          quantization=_quantization(spec))
        try:
            for q in queries[:WARMUP_QUERIES]:
                store.hybrid_search(q)
            seconds, found = [], []
            for q in queries[WARMUP_QUERIES:]:
                began = time.perf_counter()
                hits = store.hybrid_search(q)
                seconds.append(time.perf_counter() - began)
                found.append([int(h.record.id[1:]) for h in hits])
            after = after or memory()
        finally:
            store.close()
        ms = np.asarray(seconds) * 1000
        runs.append({"hnsw_ef": ef, "p50_ms": float(np.percentile(ms, 50)),
                     "p95_ms": float(np.percentile(ms, 95)), "ids": found})
    assert after is not None
    growth = {key: after[key] - before[key] for key in before}
    return {"rss_before": before, "rss_after": after, "rss_growth": growth, "runs": runs}


def main(argv: list[str]) -> int:
    """Worker entry point: ``build|serve SPEC.json``; writes the result to ``spec["out"]``."""
    step, spec_path = argv
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("TQDM_MININTERVAL", "2")
    result = {"build": build, "serve": serve}[step](spec)
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
