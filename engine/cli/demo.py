"""`mmrec demo`: index real public data, serve it on loopback, query it over gRPC.

The demo runs the same paths a deployment does: the indexing job into an
embedded Qdrant shard, then `mmrec serve` as a separate process, then the
Python client over real gRPC. It prints what it measured.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from engine.cli.render import print_info, print_results
from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.domain import EngineInfo, MmrecError, ModelStatus, SchemaMismatch
from indexers.command import print_summary
from indexers.datasets import (
    movielens_dir,
    movielens_events,
    movielens_items,
    stamps_dir,
    tuxpaint_items,
    write_jsonl,
)
from indexers.fetch import FetchOptions
from indexers.job import run_index_job

TEXT_QUERIES = [
    "toy story",
    "a romantic comedy in New York",
    "space adventure with aliens",
    "a cute cat",
    "a red fire truck",
    "musical instrument",
]
DEMO_USER, VISITOR = "ml-user-1", "demo-visitor"
LOOPBACK = "127.0.0.1"
"""Where the demo's service listens: loopback, so it needs no API keys."""
DEMO_BUDGET_MS = 10_000
"""The re-rank budget of the demo's re-ranked, explained search (its server allows it)."""
DEMO_REPLAY_USERS = 150
"""Users whose ratings the demo replays over RecordEvents: 14,949 events in ~6 s on 2 cores
(~2,400 events/s, each event rewriting its user); all 943 users' 100k would take ~45 s."""
DEMO_EPOCHS = 20
"""SASRec epochs the demo trains, then as many again on every event (about a minute on 2
cores); `mmrec train-seq` runs up to 300 with early stopping."""
IMAGE_QUERIES = ["animals/mammals/dogs/dog.png", "vehicles/emergency/firetruck.png",
                 "hobbies/music/string/guitar_classical.png"]


DEMO_RERANK_STEPS = 40
DEMO_RERANK_VALID = 20
DEMO_SHADOW_EPOCHS = 5
DEMO_RERANK_MINUTES = 5
"""The demo's short re-ranker run: steps (about 4 s each on 2 idle cores), validation lists, the
shadow SASRec's epochs, and the time it is announced with."""


def _write_if_changed(rows: Iterator[dict[str, Any]], out: Path) -> int:
    """Write JSONL rows, leaving an identical file untouched (checkpoints stay valid)."""
    fresh = out.with_suffix(".new")
    count = write_jsonl(rows, fresh)
    if out.is_file() and out.read_bytes() == fresh.read_bytes():
        fresh.unlink()
    else:
        fresh.replace(out)
    return count


def build_catalog(datasets: Path, out: Path, console: Console) -> Path | None:
    """Write the demo catalog (films + stamps) as JSONL; None if the data is missing."""
    films = movielens_dir(datasets)
    stamps = stamps_dir(datasets)
    if not (films / "ml-100k.item").is_file() or stamps is None:
        console.print(f"[red]demo data missing[/] under {datasets}: run `make data` "
                      "(or `make demo`, which runs it)")
        return None

    def rows() -> Iterator[dict[str, Any]]:
        yield from movielens_items(films)
        yield from tuxpaint_items(stamps)

    count = _write_if_changed(rows(), out)
    console.print(f"catalog: {count} items (MovieLens-100k films from {films}, "
                  f"Tux Paint stamps from {stamps}) -> {out}")
    return out


def run_demo(config: EngineConfig, *, datasets: Path, port: int,
             config_file: Path | None = None, explore_port: int | None = None) -> int:
    """Index, serve, query; then, with ``explore_port``, serve the explorer page until Ctrl-C;
    stop. Returns a process exit code."""
    console = Console()
    if not console.is_terminal:  # piped output: wide enough for the explanation column
        console = Console(width=140)
    if _on_loopback(config).auth_enabled():
        console.print("[red]auth.enabled is true[/] in the configuration or MMREC_AUTH__ENABLED, "
                      "but the demo serves on loopback without API keys: unset it to run the "
                      "demo")
        return 1
    catalog = build_catalog(datasets, config.store.data_dir.parent / "demo-catalog.jsonl",
                            console)
    if catalog is None:
        return 1

    console.rule("1. index")
    # The catalog is ours: it names the stamps' images where `make data` put them, outside
    # the catalog's folder.
    fetch = FetchOptions(allow_outside_paths=True, max_bytes=config.service.limits.max_image_bytes)
    try:
        summary = run_index_job(config, catalog, fetch=fetch)
    except SchemaMismatch as exc:
        console.print(f"[yellow]the demo store was built by an older mmrec[/] ({exc}); "
                      f"rebuilding {config.store.data_dir}")
        shutil.rmtree(config.store.data_dir)
        summary = run_index_job(config, catalog, fetch=fetch)
    print_summary(console, summary)
    events_log = config.store.data_dir.parent / "demo-events.jsonl"
    count = _write_if_changed(movielens_events(movielens_dir(datasets)), events_log)
    console.print(f"interaction log: {count:,} MovieLens ratings -> {events_log}")
    _train_behaviour(config, events_log, console)
    _train_reranker(config, events_log, console)

    console.rule("2. serve")
    command = [sys.executable, "-m", "engine", "serve", "--data-dir", str(config.store.data_dir),
               "--host", LOOPBACK, "--port", str(port)]
    if config_file is not None:
        command += ["--config", str(config_file)]
    console.print(" ".join(command))
    console.print(f"auth is off: the demo binds to loopback ({LOOPBACK}); a service bound to "
                  "any other address requires API keys (`mmrec keys create`)")
    # The one re-ranked, explained search asks for DEMO_BUDGET_MS (LLM reasons on a CPU).
    budget = max(config.service.limits.max_rerank_budget_ms, DEMO_BUDGET_MS)
    # Its own session: Ctrl-C (for the explorer) reaches the demo, which then stops it.
    server = subprocess.Popen(command, start_new_session=True, env={
        **os.environ, "MMREC_SERVICE__LIMITS__MAX_RERANK_BUDGET_MS": str(budget)})
    try:
        with MmrecClient(f"{LOOPBACK}:{port}", timeout=60) as client:
            started = time.perf_counter()
            client.wait_ready(timeout=180)
            console.print(f"service ready in {time.perf_counter() - started:.1f} s")
            info = client.info()
            print_info(console, info)
            console.rule("3. query")
            llm = next((m for m in info.models if m.role == "llm"), None)
            _text_queries(client, console, bool(llm and llm.loaded))
            _image_queries(client, console, info.models, stamps_dir(datasets))
            console.rule("4. recommend")
            _recommend(client, console, events_log, bool(llm and llm.loaded))
            console.rule("5. latency")
            _latency(client, console, info)
        if explore_port is not None:
            console.rule("6. explore")
            _explore(f"{LOOPBACK}:{port}", explore_port, stamps_dir(datasets), console)
    except MmrecError as exc:  # the service's answer, in one line rather than a traceback
        console.print(f"[red]error[/]: {escape(str(exc))}", soft_wrap=True)
        failed = True
    else:
        failed = False
    finally:
        server.terminate()
        code = server.wait(timeout=60)
    console.print(f"service stopped (exit code {code})")
    return 0 if code == 0 and not failed else 1


def _explore(service: str, port: int, stamps: Path | None, console: Console) -> None:
    """Serve the explorer page on loopback (thumbnails from the stamps) until Ctrl-C."""
    from engine.cli.explore import ExplorerNotStarted, start_explorer, wait_for_interrupt

    try:
        explorer = start_explorer(service, port=port, host=LOOPBACK,
                                  images_roots=[stamps] if stamps else [])
    except ExplorerNotStarted as exc:
        console.print(f"[red]explorer not started[/]: {escape(str(exc))} "
                      f"(`mmrec demo --explore-port N`)")
        return
    console.print(f"explorer: open {explorer.url} (search, explanations, users, timings); "
                  f"the service and the explorer run until Ctrl-C "
                  f"(`mmrec demo --no-explore` stops here)", highlight=False)
    try:
        wait_for_interrupt()
    finally:
        explorer.stop()


def _on_loopback(config: EngineConfig) -> EngineConfig:
    """``config`` as the demo's service runs it: bound to loopback."""
    service = config.service.model_copy(update={"host": LOOPBACK})
    return config.model_copy(update={"service": service})


def _text_queries(client: MmrecClient, console: Console, llm_loaded: bool) -> None:
    """Each query, explained; the first once more re-ranked by the LLM, with its reasons."""
    client.search(text="warm-up", top_k=1)
    for query in TEXT_QUERIES:
        print_results(console, repr(query), client.search(text=query, top_k=5, explain=True))
    if llm_loaded:
        result = client.search(text=TEXT_QUERIES[0], top_k=5, explain=True, explain_reason=True,
                               rerank=True, budget_ms=DEMO_BUDGET_MS)
        print_results(console, f"{TEXT_QUERIES[0]!r} re-ranked by the LLM, with its reasons",
                      result)


def _latency(client: MmrecClient, console: Console, info: EngineInfo) -> None:
    """Client-side latency of every text query, without and with LLM re-ranking."""
    llm = next((m for m in info.models if m.role == "llm"), None)
    modes = {"no re-rank": False} | ({"LLM re-rank": True} if llm and llm.loaded else {})
    for label, rerank in modes.items():
        latencies, reranked = [], []
        for query in TEXT_QUERIES:
            started = time.perf_counter()
            result = client.search(text=query, top_k=10, rerank=rerank)
            latencies.append((time.perf_counter() - started) * 1000)
            reranked.append(result.reranked)
        # How many candidates the LLM really scored within the default budget: a fast
        # "re-rank" line that scored nothing would otherwise read as a fast LLM.
        mean = statistics.mean(reranked)
        scored = f", LLM scored {mean:.1f} candidates a query" if rerank else ""
        console.print(f"{label}: p50 {statistics.median(latencies):.0f} ms, max "
                      f"{max(latencies):.0f} ms over {len(latencies)} text queries{scored} "
                      f"(gRPC round trip, default budget, device {info.device})")
    if not (llm and llm.loaded):
        console.print(f"LLM re-ranking off: {llm.reason if llm else 'not configured'}")


def _image_queries(client: MmrecClient, console: Console, models: list[ModelStatus],
                   stamps: Path | None) -> None:
    clip = next((m for m in models if m.role == "clip"), None)
    paths = [stamps / p for p in IMAGE_QUERIES if stamps and (stamps / p).is_file()]
    if not paths:
        console.print("image queries skipped: no query images found")
        return
    if clip is None or not clip.loaded:
        reason = clip.reason if clip else "no CLIP model configured"
        console.print(f"[yellow]image queries skipped[/]: the CLIP channel is off ({reason})")
        try:
            client.search(image=paths[0], top_k=5)
        except MmrecError as exc:
            console.print(f"  (the service answers an image query with {exc.status})")
        return
    for path in paths:
        result = client.search(image=path, top_k=5)
        print_results(console, f"image {path.name}", result)


def _train_behaviour(config: EngineConfig, events_log: Path, console: Console) -> None:
    """Train the behavioural channel once (a later demo run reuses the saved model)."""
    from engine.behaviour.sequential import SequentialSettings
    from indexers.behaviour import train_behaviour

    folder = config.behaviour_path()
    if folder.is_dir() and any(folder.iterdir()):
        console.print(f"behaviour model: trained already ({folder}); "
                      f"`mmrec train-seq` retrains it")
        return
    console.print(f"training the behaviour model (SASRec, at most {DEMO_EPOCHS} epochs) on "
                  f"{events_log.name} ...")
    summary = train_behaviour(config, events_log, settings=SequentialSettings(
        epochs=DEMO_EPOCHS), progress=True)
    console.print(f"behaviour model: {summary.users:,} users, {summary.interactions:,} "
                  f"interactions, {summary.epochs_run} + {summary.refit_epochs} epochs in "
                  f"{summary.train_seconds:.0f} s, "
                  f"held-out NDCG@10 {summary.best_valid_ndcg or 0:.3f}; "
                  f"{summary.vectors_written:,} items got behaviour vectors")


def _train_reranker(config: EngineConfig, events_log: Path, console: Console) -> None:
    """A short `mmrec train-rerank` run once (a later demo run reuses the saved re-ranker)."""
    from engine.domain import MmrecError
    from engine.rerank.training import TrainSettings
    from indexers.rerank import train_reranker

    folder = config.rerank_path()
    if (folder / "rerank.json").is_file():
        console.print(f"re-ranker: trained already ({folder}); `mmrec train-rerank` retrains it")
        return
    console.print(f"training the listwise re-ranker: a short run of {DEMO_RERANK_STEPS} LoRA "
                  f"steps and {DEMO_RERANK_VALID} validation lists, about "
                  f"{DEMO_RERANK_MINUTES} min on 2 CPU cores (`mmrec train-rerank` runs "
                  f"{TrainSettings().max_examples})")
    try:
        summary = train_reranker(config, events_log, shadow_epochs=DEMO_SHADOW_EPOCHS,
                                 settings=TrainSettings(max_examples=DEMO_RERANK_STEPS,
                                                        eval_every=DEMO_RERANK_STEPS,
                                                        valid_examples=DEMO_RERANK_VALID))
    except MmrecError as exc:
        console.print(f"[yellow]re-ranker not trained[/]: {exc}")
        return
    v, blend = summary.artifact.validation, summary.artifact.blend
    console.print(f"re-ranker: validation NDCG@10 first stage {v['first_stage']:.3f}, "
                  f"LLM {v['llm']:.3f}, blended {v['blended']:.3f} at weight {blend.weight:g} "
                  f"({summary.artifact.training['seconds']:.0f} s); a run this short rarely "
                  f"beats the first stage by 2 standard errors on validation, and weight 0 "
                  f"then keeps its order")


def _recommend(client: MmrecClient, console: Console, events_log: Path, llm: bool) -> None:
    """Replay the log as live events, recommend from history, react to one new event, erase."""
    from indexers.interactions import read_events

    if client.recommend(user_id=DEMO_USER, top_k=1).cold_start:
        replay = MmrecClient(client.target, timeout=900)
        started = time.perf_counter()
        chosen = {f"ml-user-{n}" for n in range(1, DEMO_REPLAY_USERS + 1)}
        report = replay.record_events(e for e in read_events(events_log) if e.user_id in chosen)
        seconds = time.perf_counter() - started
        replay.close()
        console.print(f"replayed {report.recorded:,} events of {report.users_updated:,} users "
                      f"(the first {DEMO_REPLAY_USERS} MovieLens users) "
                      f"over RecordEvents in {seconds:.1f} s ({report.recorded / seconds:,.0f} "
                      f"events/s); {len(report.rejected)} refused")
    else:
        console.print("the MovieLens events were recorded by an earlier demo run")
    print_results(console, f"recommended for {DEMO_USER}",
                  client.recommend(user_id=DEMO_USER, top_k=5, explain=True))
    print_results(console, f"{DEMO_USER}, in the context 'space adventure with aliens'",
                  client.recommend(user_id=DEMO_USER, top_k=5,
                                   context="space adventure with aliens", explain=True))
    if llm:
        print_results(console, f"{DEMO_USER}, re-ranked by the LLM given the recent history "
                      "(the trained re-ranker when `train-rerank` ran, blended with the first "
                      "stage by its validation weight)",
                      client.recommend(user_id=DEMO_USER, top_k=5, rerank=True, explain=True,
                                       explain_reason=True))
    client.delete_user(VISITOR)
    print_results(console, f"new visitor {VISITOR!r} (no history)",
                  client.recommend(user_id=VISITOR, top_k=5))
    from engine.domain import Event

    started = time.perf_counter()
    client.record_events([Event(VISITOR, "ml-1", "like", 0.0, time.time())])
    result = client.recommend(user_id=VISITOR, top_k=5, explain=True)
    took = (time.perf_counter() - started) * 1000
    print_results(console, f"{VISITOR} after liking Toy Story (event to new list: {took:.0f} ms)",
                  result)
    erased = client.delete_user(VISITOR)
    console.print(f"DeleteUser({VISITOR!r}): {erased.events} events, {erased.seen} seen items, "
                  f"profile erased: {erased.profile}, {erased.cache_entries} cache entries")
