"""The suites of ``mmrec bench``: which benchmark scripts each runs, with which arguments, for
how long, and what it needs.

A suite is a list of steps; a step is one ``python -m benchmarks.<module>`` process with its
full and its ``--quick`` arguments (``None``: the step is left out of a quick run) and its
expected minutes on 2 CPU cores. Each script writes its own JSON, Markdown and PNG into the
output folder (``MMREC_BENCH_OUT``, read by ``benchmarks.report.RESULTS``), so a suite
needs no code of its own here. ``requires`` says in one line why a suite cannot run on this
machine, or ``None``.

Expected minutes are estimates for 2 CPU cores, from the steps' own runs where they were timed
(their results' Markdown says under what load); they set the progress bar and the up-front
estimate, nothing else. The quick run as a whole has not yet been timed end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

OUT = "{out}"
"""Stands for the run's output folder in a step's arguments."""


@dataclass(frozen=True, slots=True)
class Step:
    """One benchmark process."""

    module: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = ()
    full_minutes: float = 1.0
    quick_minutes: float = 1.0
    label: str = ""
    """Tells two steps of one module apart (``ann`` at 100k and at 1M)."""

    @property
    def name(self) -> str:
        """The step's name in logs and reports."""
        return f"{self.module}{f' ({self.label})' if self.label else ''}"


def _always() -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Suite:
    """A named group of steps and what they need."""

    name: str
    what: str
    steps: tuple[Step, ...]
    requires: Callable[[], str | None] = field(default=_always)

    def planned(self, quick: bool) -> list[tuple[Step, tuple[str, ...]]]:
        """The steps of a full or quick run, each with its arguments."""
        chosen = [(s, s.quick if quick else s.full) for s in self.steps]
        return [(s, args) for s, args in chosen if args is not None]

    def minutes(self, quick: bool) -> float:
        """Expected minutes on 2 CPU cores."""
        return sum(s.quick_minutes if quick else s.full_minutes for s, _ in self.planned(quick))


def clip_weights() -> str | None:
    """Why the CLIP suite cannot run: the configured open_clip weights are not on disk."""
    from engine.config import EngineConfig
    from engine.domain import ModelUnavailable
    from engine.encoders.factory import resolve_clip_spec

    clip = EngineConfig.load().clip
    try:
        resolve_clip_spec(clip)
    except ModelUnavailable:
        return (f"no CLIP weights for open_clip {clip.model} {clip.pretrained!r} on this "
                "machine: set clip.pretrained to a local weights file")
    return None


def cuda() -> str | None:
    """Why the GPU suite cannot run: torch sees no CUDA device."""
    import torch

    return None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available())"


def tux_paint() -> str | None:
    """Why a Tux Paint suite cannot run."""
    from indexers.datasets import stamps_dir

    return None if stamps_dir() else "the Tux Paint stamps are missing: run `make data`"


def movielens() -> str | None:
    """Why a MovieLens suite cannot run."""
    from indexers.datasets import movielens_dir

    folder = movielens_dir()
    ok = (folder / "ml-100k.item").is_file()
    return None if ok else f"MovieLens-100k is missing from {folder}: run `make data`"


def _all(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
    def check() -> str | None:
        return next((r for r in (c() for c in checks) if r), None)
    return check


SUITES: tuple[Suite, ...] = (
    Suite("quality", "retrieval on Tux Paint (channel ablations, RRF vs DBSF, re-rank) and "
          "recommendation on MovieLens-100k (baselines, ablations, the LLM rows)", (
              Step("retrieval_quality", (), ("--no-llm",), 12, 1.0),
              Step("recommend_quality", (), ("--seeds", "0", "--epochs", "5",
                                             "--llm-users", "0"), 60, 1.8),
              Step("rerank_summary", (), (), 0.2, 0.2, "committed trained-LLM runs")),
          _all(tux_paint, movielens)),
    Suite("clip", "text-to-image and image-to-text Recall@1/5/10 on Tux Paint",
          (Step("clip_retrieval", (), ("--limit", "100"), 8, 0.6),), _all(tux_paint, clip_weights)),
    Suite("ann", "HNSW recall@10 against exact search and the hnsw_ef curve", (
        Step("ann", ("--size", "100000", "--out", OUT),
             ("--size", "10000", "--queries", "100", "--out", OUT), 15, 1, "100k"),
        Step("ann", ("--size", "1000000", "--out", f"{OUT}/1m"), None, 120, 0, "1M"))),
    Suite("scale", "index rate, HNSW build, query p50/p95, RSS and disk per item, 10k-1M", (
        Step("scale", ("--sizes", "10000,30000,100000,300000,1000000", "--out", OUT),
             ("--sizes", "5000,20000", "--fused-sizes", "5000", "--queries", "100", "--out",
              OUT), 90, 1.5),)),
    Suite("quantisation", "int8 and binary with rescoring against float32", (
        Step("quantisation", ("--size", "100000", "--out", OUT),
             ("--size", "10000", "--queries", "100", "--out", OUT), 15, 1, "100k"),
        Step("quantisation", ("--size", "1000000", "--out", f"{OUT}/1m"), None, 120, 0,
             "1M"))),
    Suite("service", "gRPC Search and Recommend QPS and p50/p95/p99 at 1, 8 and 32 clients "
          "against the raw parts", (
        Step("service_load", (), ("--quick",), 6, 1.5),
        Step("store_batching", ("--out", OUT), ("--quick", "--out", OUT), 2, 0.3),
        Step("search_latency", (), None, 15, 0),
        Step("recommend_latency", (), None, 10, 0)),
          movielens),
    Suite("indexing", "the index job against the raw encoder rate, and on Ray with 1 and 2 "
          "workers", (
        Step("indexing_throughput", (), ("--films", "300", "--stamps", "32", "--repeats",
                                         "1"), 8, 1),
        Step("indexing_ray", ("--out", OUT), None, 10, 0)),  # Ray's start-up: full run only
          _all(tux_paint, movielens)),
    Suite("gpu", "encoder and re-ranker throughput in fp16/bf16 against the raw forward pass",
          (Step("gpu_throughput", (), ("--quick",), 10, 3),), cuda),
)
