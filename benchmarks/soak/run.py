"""The soak's command line: set up the server and its data, run the load, report."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

import benchmarks.soak as soak
from benchmarks.report import RESULTS, commit, from_engine
from benchmarks.soak.data import SEED_EVENTS, SetupTimes, SoakData, index_and_seed, load_data
from benchmarks.soak.load import MIX, Call, Stream, all_calls, run_streams
from benchmarks.soak.output import markdown, plot, save
from benchmarks.soak.server import (
    ServerProcess,
    child_pids,
    rss_mib,
    start_server,
    wait_listening,
    write_config,
)
from benchmarks.soak.stats import (
    build_spans,
    fit_rss,
    summarise_calls,
    throughput_series,
    warmup_seconds,
)
from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.domain import EngineInfo
from indexers.datasets import DATASETS

SETUP_S, INDEX_S_PER_FILM = 35.0, 0.025
"""About how long setup takes on 2 busy cores: the server's start and first encode, then
per film indexed (measured here)."""


def setup_seconds(films: int) -> float:
    """About how long :func:`setup_server` and the server's start take for ``films``."""
    return SETUP_S + INDEX_S_PER_FILM * films

OPTIMIZE_AFTER = 1000


@dataclass
class LoadRun:
    """What the load phase measured: every call, its wall time and the server's RSS."""

    calls: list[Call]
    events_recorded: int
    items_upserted: int
    wall_s: float
    rss_t: list[float]
    rss_mib: list[float]
    children: list[int]
    """Child processes of the server at each sample (a background index build's optimizer)."""
    hwm_mib: float | None
    """The server's peak RSS (VmHWM) when the load ended."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options (``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak",
                                     description=(soak.__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="Load duration.")
    parser.add_argument("--concurrency", type=int, default=16, choices=range(1, 65),
                        metavar="N", help="Concurrent client streams (8-32 intended).")
    parser.add_argument("--rerank-share", type=float, default=0.0,
                        help="Share of Search/Recommend requests asking for LLM re-ranking "
                        "(loads SmolLM2; its lane has 1 worker).")
    parser.add_argument("--items", type=int, default=0, help="Films to index (0: all 1,682).")
    parser.add_argument("--users", type=int, default=0, help="Users to replay (0: all 943).")
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2",
                        help="text_encoder.model of the server.")
    parser.add_argument("--optimize-after", type=int, default=OPTIMIZE_AFTER,
                        help="store.optimize_after of the server: upserts per background "
                        "HNSW build (copy and swap).")
    parser.add_argument("--timeout", type=float, default=30.0, help="Client deadline per call.")
    parser.add_argument("--datasets", type=Path, default=DATASETS,
                        help="Where `make data` unpacked the data sets.")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for soak.*.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the soak and write its results; returns what soak.json holds (less the machine)."""
    args = parse_args(argv)
    data = load_data(args.datasets, items=args.items, users=args.users)
    print(f"soak at commit {commit()}: {len(data.films):,} MovieLens-100k films, "
          f"{len(data.ratings):,} users; {args.concurrency} streams for {args.seconds:.0f} s. "
          f"Expected: setup about {setup_seconds(len(data.films)):.0f} s "
          f"(server start, indexing, seed events), then {args.seconds:.0f} s of load.",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="mmrec-soak-") as work:
        folder = Path(work)
        config = write_config(folder / "soak.toml", text_model=args.text_model,
                              llm=args.rerank_share > 0,
                              optimize_after=args.optimize_after)
        server = start_server(config, folder / "data", folder / "serve.log")
        try:
            setup = setup_server(server, data)
            print(f"setup: ready in {setup.ready_s:.1f} s, {setup.items:,} films indexed in "
                  f"{setup.index_s:.1f} s, {setup.events:,} seed ratings in "
                  f"{setup.events_s:.1f} s", flush=True)
            with MmrecClient(server.target, timeout=60) as client:
                info = client.info()  # what the server loaded, for the provenance
            run = _load(server, data, args)
        finally:
            stopping = time.perf_counter()
            exit_code = server.stop()
            print(f"server stopped in {time.perf_counter() - stopping:.1f} s (exit code "
                  f"{exit_code})", flush=True)
    return _report(args, data, setup, run, exit_code, info)


def setup_server(server: ServerProcess, data: SoakData) -> SetupTimes:
    """Wait for the server, then index the films and seed the users' first ratings (the
    soak's and ``benchmarks.service_load``'s setup)."""
    started = time.perf_counter()
    wait_listening(server, timeout=300)
    with MmrecClient(server.target, timeout=600) as client:
        client.wait_ready(timeout=300)
        return index_and_seed(client, data, time.perf_counter() - started)


def _load(server: ServerProcess, data: SoakData, args: argparse.Namespace) -> LoadRun:
    """Run the streams with a progress bar over seconds, sampling the server's RSS each."""
    rss_t: list[float] = [0.0]
    rss: list[float] = [rss_mib(server.pid) or 0.0]
    children: list[int] = [len(child_pids(server.pid))]
    bar = tqdm(total=int(args.seconds), unit="s", desc="soak", mininterval=1.0)

    def tick(streams: list[Stream], elapsed: float) -> None:
        value = rss_mib(server.pid)
        if value is None:
            raise RuntimeError(f"the server died during the soak:\n{server.log_tail()}")
        rss_t.append(elapsed)
        rss.append(value)
        children.append(len(child_pids(server.pid)))
        calls = [c for s in streams for c in s.calls[-200:]]
        bar.n = min(int(args.seconds), int(elapsed))
        bar.set_postfix(requests=sum(len(s.calls) for s in streams),
                        not_ok=sum(c.code != "OK" for c in calls), rss=f"{value:.0f}MiB")

    try:
        streams, wall = run_streams(server.target, data, concurrency=args.concurrency,
                                  seconds=args.seconds, rerank_share=args.rerank_share,
                                  timeout=args.timeout, tick=tick)
    finally:
        bar.close()
    return LoadRun(all_calls(streams), sum(s.events_recorded for s in streams),
                   sum(s.items_upserted for s in streams), wall, rss_t, rss, children,
                   rss_mib(server.pid, "VmHWM"))


def _report(args: argparse.Namespace, data: SoakData, setup: SetupTimes, run: LoadRun,
            exit_code: int, info: EngineInfo) -> dict[str, Any]:
    """Summarise, print, and write soak.json, soak.md and soak.png; ``info`` is the server's
    (its models, store and device: the provenance)."""
    calls, wall, rss_t, rss = run.calls, run.wall_s, run.rss_t, run.rss_mib
    rpcs = summarise_calls(calls, list(MIX), wall)
    trend = fit_rss(rss_t, rss, warmup_seconds(args.seconds))
    throughput = throughput_series(calls, args.seconds)
    result: dict[str, Any] = {
        "run": {"seconds": wall, "seconds_asked": args.seconds,
                "concurrency": args.concurrency, "mix": MIX, "rerank_share": args.rerank_share,
                "rerank": f"on for {args.rerank_share:.0%} of Search/Recommend"
                if args.rerank_share > 0 else "off",
                "text_model": args.text_model, "clip": False, "timeout_s": args.timeout,
                "optimize_after": args.optimize_after, "server_exit_code": exit_code,
                "max_events": EngineConfig().profiles.max_events},
        "data": {"items": len(data.films), "users": len(data.ratings),
                 "seed_events_per_user": SEED_EVENTS, "source": "MovieLens-100k"},
        "setup": asdict(setup),
        "totals": {"requests": len(calls), "per_s": len(calls) / wall,
                   "errors": sum(sum(r.errors.values()) for r in rpcs),
                   "shed": sum(r.shed for r in rpcs),
                   "events_recorded": run.events_recorded,
                   "items_upserted": run.items_upserted},
        "rpcs": [asdict(r) for r in rpcs],
        "rss": {"trend": trend.as_dict(), "hwm_mib": run.hwm_mib,
                "index_builds": build_spans(rss_t, run.children),
                "samples": [[round(t, 2), round(v, 2), c]
                            for t, v, c in zip(rss_t, rss, run.children, strict=True)]},
        "throughput_per_s_10s": throughput,
    }
    text = markdown(result, rpcs, trend)
    json_path, md_path = save(args.out, result, text,
                              provenance=from_engine(info, data.describe()))
    plot(args.out / "soak.png", rss_t, rss, trend, rpcs, throughput,
         result["rss"]["index_builds"])
    print(text)
    print(f"wrote {json_path}, {md_path} and {args.out / 'soak.png'}")
    return result
