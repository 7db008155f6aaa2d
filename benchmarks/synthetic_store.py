"""Synthetic catalogs for the store benchmarks (scale, ann, quantisation), and their results.

Synthetic vectors measure speed, memory and ANN recall only, never retrieval quality.
Vectors are unit-normalised draws of a Gaussian mixture (``CLUSTERS`` centres, noise of norm
``SPREAD`` with a power-law spectrum), so neighbourhoods are clustered as real embeddings are
and HNSW meets a realistic problem (uniform random vectors are the worst case for ANN
and unlike any catalog). Vector ``i`` depends only on the seed and ``i``: it is made in
fixed blocks of ``BLOCK`` rows, each from its own seeded generator, so a 1M catalog
starts with the 100k one and no process holds more than a block it does not need.

Two item layouts:
- ``single``: one 512-d ``fused`` vector and a minimal payload (the store's raw cost);
- ``fused``: the layout mmrec stores with CLIP and text on: ``clip`` (512), ``text``
  (384), ``fused`` (their normalised concatenation, 896), a BM25 ``lexical`` sparse vector
  of a synthetic title and description (mmrec's own analyser), and a full payload.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from benchmarks import report
from engine.domain import ChannelQuery, HybridQuery, ItemRecord, StoredItem
from engine.encoders import LexicalEncoder
from engine.store import VectorSchema

Layout = Literal["single", "fused"]
DIM, TEXT_DIM, SEED = 512, 384, 0
CLUSTERS, SPREAD, BLOCK = 1000, 1.0, 10_000
TENANT = "bench"
TOP_K = 10
_QUERY_STREAM = 1_000_003  # generator stream of query vectors (never an item block)
_TEXT_STREAM = 2_000_003  # generator stream of the fused layout's text vectors

_lexical: LexicalEncoder | None = None


def lexical() -> LexicalEncoder:
    """mmrec's BM25 analyser (made once per process)."""
    global _lexical
    if _lexical is None:
        _lexical = LexicalEncoder()
    return _lexical


def _centres(dim: int, seed: int) -> np.ndarray:
    """The mixture's cluster centres (unit vectors), the same for every block."""
    centres = np.random.default_rng((seed, dim)).standard_normal((CLUSTERS, dim))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def _draw(rng: np.random.Generator, centres: np.ndarray, count: int) -> np.ndarray:
    """``count`` unit vectors around random centres (float32).

    The noise has a power-law spectrum (axis ``j`` has standard deviation proportional to
    ``(j + 1) ** -0.5``, expected norm ``SPREAD``), as embeddings have a few strong
    directions and many weak ones; isotropic noise in 512-d would be the worst case."""
    dim = centres.shape[1]
    scales = (np.arange(1, dim + 1) ** -0.5)
    scales *= SPREAD / np.linalg.norm(scales)
    noise = rng.standard_normal((count, dim)) * scales
    points = centres[rng.integers(0, CLUSTERS, count)] + noise
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def blocks(count: int, dim: int = DIM, seed: int = SEED, stream: int = 0
           ) -> Iterator[tuple[int, np.ndarray]]:
    """(first index, vectors) of items ``0..count-1``, one block at a time."""
    centres = _centres(dim, seed)
    for start in range(0, count, BLOCK):
        rng = np.random.default_rng((seed, stream, start // BLOCK))
        yield start, _draw(rng, centres, BLOCK)[: min(BLOCK, count - start)]


def query_vectors(count: int, dim: int = DIM, seed: int = SEED) -> np.ndarray:
    """Query vectors from the same mixture (not catalog points)."""
    return _draw(np.random.default_rng((seed, _QUERY_STREAM)), _centres(dim, seed), count)


def exact_top(size: int, queries: np.ndarray, k: int = TOP_K, seed: int = SEED) -> np.ndarray:
    """The exact top ``k`` item indices by cosine for each query (numpy, block by block)."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best = np.zeros((len(queries), 0), dtype=np.float32)
    for start, vectors in blocks(size, queries.shape[1], seed):
        scores = np.concatenate([best, queries @ vectors.T], axis=1)
        ids = np.concatenate([best_ids, np.arange(start, start + len(vectors))[None].repeat(
            len(queries), axis=0)], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    return best_ids


# -- item layouts ----------------------------------------------------------------------------

def schema(layout: Layout) -> VectorSchema:
    """The store schema of a layout."""
    if layout == "single":
        return VectorSchema({"fused": DIM})
    return VectorSchema({"fused": DIM + TEXT_DIM, "clip": DIM, "text": TEXT_DIM},
                        sparse=("lexical",), analysers={"lexical": lexical().analyser})


_WORDS = [f"{a}{b}{c}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ro", "vi")
          for b in ("ber", "dan", "gol", "pin", "sar", "tek") for c in ("a", "o", "is", "um")]


def _text(rng: random.Random, words: int) -> str:
    """A pseudo-sentence from a fixed vocabulary of 192 words."""
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def items(layout: Layout, start: int, vectors: np.ndarray, seed: int = SEED
          ) -> list[StoredItem]:
    """The items of one block: ids ``i<index>``, vectors and payload of the layout."""
    if layout == "single":
        return [StoredItem(ItemRecord(id=f"i{start + n}", tenant=TENANT), {"fused": v})
                for n, v in enumerate(vectors)]
    rng = random.Random(seed * 1_000_003 + start)
    text = _text_block(start, len(vectors), seed)
    records = [ItemRecord(id=f"i{start + n}", tenant=TENANT, title=_text(rng, 4),
                          text=_text(rng, 30), image_uri=f"https://img.example/{start + n}.jpg",
                          attributes={"category": rng.choice(_WORDS), "price": n % 500})
               for n in range(len(vectors))]
    sparse = lexical().encode_documents([f"{r.title} {r.text}" for r in records])
    fused = np.concatenate([vectors, text], axis=1) / np.sqrt(2.0)
    return [StoredItem(record, {"clip": v, "text": t, "fused": f, "lexical": s})
            for record, v, t, f, s in zip(records, vectors, text, fused, sparse, strict=True)]


def _text_block(start: int, count: int, seed: int) -> np.ndarray:
    """The fused layout's text vectors of the block starting at ``start``."""
    centres = _centres(TEXT_DIM, seed)
    rng = np.random.default_rng((seed, _TEXT_STREAM, start // BLOCK))
    return _draw(rng, centres, BLOCK)[:count]


def query(layout: Layout, vector: np.ndarray, text: str, limit: int = TOP_K) -> HybridQuery:
    """A search as mmrec makes it: the fused channel alone (``single``), or fused + text +
    lexical fused by RRF (``fused``; the text part is the clip query's neighbour)."""
    if layout == "single":
        return HybridQuery([ChannelQuery("fused", vector, limit)], limit, TENANT)
    text_vector = query_vectors(1, TEXT_DIM, int(abs(vector[0]) * 1e6))[0]
    fused = np.concatenate([vector, text_vector]) / np.sqrt(2.0)
    channels = [ChannelQuery("fused", fused, 100), ChannelQuery("text", text_vector, 100),
                ChannelQuery("lexical", lexical().encode_queries([text])[0], 100)]
    return HybridQuery(channels, limit, TENANT)


def query_texts(count: int, seed: int = SEED) -> list[str]:
    """Lexical query texts (two vocabulary words each)."""
    rng = random.Random(seed + 7)
    return [_text(rng, 2) for _ in range(count)]


# -- provenance and results ------------------------------------------------------------------

def provenance(layout: Layout, size: int, seed: int = SEED) -> dict[str, Any]:
    """What produced a row: the data, the store backend, versions, commit and date."""
    return {
        "data": {"kind": "synthetic Gaussian mixture, unit vectors", "layout": layout,
                 "size": size, "dim": DIM if layout == "single" else DIM + TEXT_DIM,
                 "seed": seed, "clusters": CLUSTERS, "spread": SPREAD},
        "store": report.edge_store(),
        "versions": {"numpy": np.__version__, "qdrant-edge-py": metadata.version(
            "qdrant-edge-py")},
        "commit": report.commit(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


LAYOUTS: dict[str, str] = {
    "single": f"one {DIM}-d vector",
    "fused": f"fused {DIM + TEXT_DIM}-d + clip {DIM} + text {TEXT_DIM} + BM25 sparse + payload",
}
"""Each layout in words, for the provenance line."""


def store_provenance(sizes: dict[str, list[int]], seed: int = SEED) -> report.Provenance:
    """The provenance of a store suite's file: synthetic vectors of each layout at its sizes,
    no model (the vectors are drawn, not encoded), the EdgeStore, on the CPU."""
    parts = [f"{layout} layout ({LAYOUTS[layout]}) at {', '.join(f'{n:,}' for n in counts)} "
             "items" for layout, counts in sizes.items() if counts]
    data = (f"synthetic Gaussian-mixture unit vectors (seed {seed}, {CLUSTERS} clusters), "
            + "; ".join(parts))
    return report.Provenance(data, {}, report.edge_store(), "cpu")


def save(out_dir: Path, name: str, data: dict[str, Any], markdown: str, *,
         provenance: report.Provenance) -> Path:
    """Write ``name``.json (with the machine and ``provenance``) and ``name``.md into
    ``out_dir``; the caller saves ``name``.png there. Returns the JSON path."""
    json_path, _ = report.write(name, data, markdown, provenance=provenance, out=out_dir)
    return json_path
