"""Observability over real gRPC on loopback: the Prometheus endpoint, request ids, JSON log
lines, stage timings and the optional OpenTelemetry spans (real server, real store, tiny
random models; one engine for the module, a server per concern)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.domain import FailedPrecondition
from engine.runtime.engine import Engine
from engine.service.calls import ACCESS_LOGGER, REQUEST_ID, request_id
from engine.service.logs import CallFilter, JsonFormatter
from engine.service.metrics import ServiceMetrics
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from engine.service.tracing import start_tracing
from tests.conftest import ServerThread, make_config
from tests.test_service import upsert
from tests.tiny_models import make_tiny_clip_settings

ITEMS = [pb.Item(id=f"i{k}", title=title, text=f"{title} for sale") for k, title in enumerate(
    ["red apple", "green pear", "mountain bike", "road bike", "blue vase", "clay pot"])]
GENERATED = re.compile(r"[0-9a-f]{32}")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_service(config: EngineConfig, **service: object) -> EngineConfig:
    return config.model_copy(update={"service": config.service.model_copy(update=service)})


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, tiny_text_dir: object) -> EngineConfig:
    base = make_config(tmp_path_factory.mktemp("metrics") / "store", tiny_text_dir,  # type: ignore[arg-type]
                       make_tiny_clip_settings())
    return with_service(base, metrics_port=free_port())


@pytest.fixture(scope="module")
def engine(config: EngineConfig) -> Iterator[Engine]:
    eng = Engine.from_config(config)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def server(engine: Engine, config: EngineConfig) -> Iterator[ServerThread]:
    srv = ServerThread(engine, config)
    with grpc.insecure_channel(srv.target) as channel:
        assert upsert(pb_grpc.RecommenderStub(channel), *ITEMS).upserted == len(ITEMS)
    yield srv
    srv.stop()


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the service logs during the test, as `service.log_format = "json"` writes it."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CallFilter())
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    levels = root.level, access.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    access.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(levels[0])
    access.setLevel(levels[1])


def scrape(config: EngineConfig) -> Samples:
    url = f"http://127.0.0.1:{config.service.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def logged(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def access_lines(buffer: io.StringIO, waiting_for: str = "") -> dict[str, dict[str, object]]:
    """The access lines by request id, once the one ``waiting_for`` is there (5 s at most)."""
    deadline = time.monotonic() + 5
    while True:
        entries = {str(e["request_id"]): e for e in logged(buffer)
                   if e["logger"] == "engine.service.access"}
        if not waiting_for or waiting_for in entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.01)


def test_counters_histograms_and_gauges(stub: pb_grpc.RecommenderStub,
                                        config: EngineConfig) -> None:
    before = scrape(config)
    for text in ("red apple", "road bike"):
        stub.Search(pb.SearchRequest(text=text, top_k=3, explain=True), timeout=30)
    with pytest.raises(grpc.RpcError) as bad:
        stub.Search(pb.SearchRequest(text="x", top_k=10_000), timeout=30)   # above max_top_k
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.Recommend(pb.RecommendRequest(positive_ids=["i0"], top_k=2), timeout=30)
    after = scrape(config)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("mmrec_rpc_requests_total", rpc="Search", code="OK") == 2
    assert delta("mmrec_rpc_requests_total", rpc="Search", code="INVALID_ARGUMENT") == 1
    assert delta("mmrec_rpc_requests_total", rpc="Recommend", code="OK") == 1
    assert delta("mmrec_rpc_duration_seconds_count", rpc="Search") == 3
    assert delta("mmrec_rpc_duration_seconds_bucket", rpc="Search", le="+Inf") == 3
    assert delta("mmrec_rpc_duration_seconds_sum", rpc="Search") > 0
    for stage in ("encode", "retrieve", "rerank", "explain"):
        assert delta("mmrec_stage_duration_seconds_count", rpc="Search", stage=stage) == 2
    for stage in ("profile", "encode", "retrieve", "rerank"):
        assert delta("mmrec_stage_duration_seconds_count", rpc="Recommend", stage=stage) == 1
    assert delta("mmrec_stage_duration_seconds_count", rpc="Recommend", stage="explain") == 0
    assert delta("mmrec_rerank_budget_exhausted_total", rpc="Search") == 0
    # two searches, one after the other: two query batches of one (recommend had no context)
    assert ("mmrec_query_batch_size_count", frozenset()) in after
    assert delta("mmrec_query_batch_size_count") == 2
    assert delta("mmrec_query_batch_size_bucket", le="1") == 2
    assert delta("mmrec_query_batch_size_sum") == 2
    assert value(after, "mmrec_rpc_requests_total", rpc="UpsertItems", code="OK") == 1
    assert value(after, "mmrec_lane_unfinished", lane="plain") == 0
    limit = config.service.workers + config.service.limits.max_queued
    assert value(after, "mmrec_lane_limit", lane="plain") == limit
    assert value(after, "mmrec_store_up") == 1
    assert value(after, "mmrec_store_items", tenant="default") == len(ITEMS)
    assert value(after, "mmrec_store_items_all") == len(ITEMS)
    assert ("mmrec_store_users", frozenset({("tenant", "default")})) in after
    assert ("mmrec_index_building", frozenset()) in after


def test_lane_depth_gauge_and_context_in_the_lane_thread(
        server: ServerThread, config: EngineConfig, json_lines: io.StringIO) -> None:
    lane = server.running.service.plain
    release = threading.Event()

    def held() -> None:   # logs from the lane's thread, then holds it
        logging.getLogger("tests.lane").info("in the lane")
        release.wait(10)

    async def occupy() -> None:
        REQUEST_ID.set("lane-test-1")
        await lane.run(held, timeout=20)

    future = asyncio.run_coroutine_threadsafe(occupy(), server.loop)
    deadline = time.monotonic() + 10
    while lane.unfinished == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert value(scrape(config), "mmrec_lane_unfinished", lane="plain") == 1
    finally:
        release.set()
    future.result(10)
    time.sleep(0.05)  # the lane's done callback runs on the server's loop
    assert value(scrape(config), "mmrec_lane_unfinished", lane="plain") == 0
    lines = [e for e in logged(json_lines) if e["logger"] == "tests.lane"]
    assert [e["request_id"] for e in lines] == ["lane-test-1"]


def test_request_id_echoed_and_logged(stub: pb_grpc.RecommenderStub,
                                      json_lines: io.StringIO) -> None:
    request = pb.SearchRequest(text="blue vase", top_k=2)
    _, call = stub.Search.with_call(request, timeout=30,
                                    metadata=(("x-request-id", "req-42.a:b"),))
    assert dict(call.initial_metadata())["x-request-id"] == "req-42.a:b"
    for bad in ("has space", "x" * 129, "a/b", ""):
        _, call = stub.Search.with_call(request, timeout=30, metadata=(("x-request-id", bad),))
        assert GENERATED.fullmatch(dict(call.initial_metadata())["x-request-id"])
    _, first = stub.Search.with_call(request, timeout=30)
    _, second = stub.Search.with_call(request, timeout=30)
    ids = [dict(c.initial_metadata())["x-request-id"] for c in (first, second)]
    assert all(GENERATED.fullmatch(i) for i in ids) and ids[0] != ids[1]
    with pytest.raises(grpc.RpcError) as refused:   # an aborted call is answered with it too
        stub.Search(pb.SearchRequest(text="x", top_k=10_000), timeout=30,
                    metadata=(("x-request-id", "req-bad-1"),))
    assert dict(refused.value.initial_metadata())["x-request-id"] == "req-bad-1"
    entries = access_lines(json_lines, "req-bad-1")  # abort answers before the line is written
    ok, failed = entries["req-42.a:b"], entries["req-bad-1"]
    assert (ok["rpc"], ok["code"], ok["level"]) == ("Search", "OK", "INFO")
    assert failed["code"] == "INVALID_ARGUMENT"
    assert isinstance(ok["ms"], float) and ok["ms"] > 0
    assert {"ts", "message"} <= ok.keys() and ok["ts"].endswith("+00:00")  # type: ignore[union-attr]
    assert request_id((("x-request-id", b"bytes"),))  # binary metadata: replaced


def test_stage_timings_in_search_and_recommend(server: ServerThread,
                                               json_lines: io.StringIO) -> None:
    with MmrecClient(server.target) as client:
        start = time.perf_counter()
        found = client.search(text="mountain bike", top_k=3, explain=True)
        search_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        liked = client.recommend(positive_ids=["i2"], top_k=2, diversity=0.5, explain=True)
        recommend_ms = (time.perf_counter() - start) * 1000
    assert set(found.stage_ms) == {"encode", "retrieve", "rerank", "explain"}
    assert set(liked.stage_ms) == {"profile", "encode", "retrieve", "rerank", "diversify",
                                   "explain"}
    served = {e["rpc"]: e["ms"] for e in logged(json_lines)
              if e["logger"] == "engine.service.access"}
    for result, wall, rpc in ((found, search_ms, "Search"), (liked, recommend_ms, "Recommend")):
        assert all(ms >= 0 for ms in result.stage_ms.values())
        assert sum(result.stage_ms.values()) <= served[rpc] <= wall   # type: ignore[operator]


def test_budget_hits_are_counted_from_the_response() -> None:
    metrics = ServiceMetrics()
    metrics.observe("Search", "OK", 0.2, pb.SearchResponse(rerank_budget_exhausted=True,
                                                            stage_ms={"rerank": 150.0}))
    metrics.observe("Search", "OK", 0.1, pb.SearchResponse())
    metrics.observe("Recommend", "OK", 0.1, pb.RecommendResponse(rerank_budget_exhausted=True))
    get = metrics.registry.get_sample_value
    assert get("mmrec_rerank_budget_exhausted_total", {"rpc": "Search"}) == 1
    assert get("mmrec_rerank_budget_exhausted_total", {"rpc": "Recommend"}) == 1
    assert get("mmrec_stage_duration_seconds_sum", {"rpc": "Search", "stage": "rerank"}) == 0.15


def test_metrics_and_tracing_off_by_default(engine: Engine, config: EngineConfig) -> None:
    srv = ServerThread(engine, with_service(config, metrics_port=0))
    try:
        telemetry = srv.running.telemetry
        assert telemetry is not None and telemetry.endpoint is None and telemetry.metrics is None
        assert telemetry.tracing is None and telemetry.interceptors == [telemetry.calls]
    finally:
        srv.stop()


def test_tracing_without_opentelemetry_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.grpc", None)
    with pytest.raises(FailedPrecondition, match=r"mmrec\[tracing\]"):
        start_tracing()


def test_a_span_per_call_and_per_stage(engine: Engine, config: EngineConfig) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)   # once per process; spans only where tracing is on
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider was set in this process")
    srv = ServerThread(engine, with_service(config, metrics_port=0, tracing=True))
    try:
        with grpc.insecure_channel(srv.target) as channel:
            pb_grpc.RecommenderStub(channel).Search(
                pb.SearchRequest(text="clay pot", top_k=2, explain=True), timeout=30,
                metadata=(("x-request-id", "traced-1"),))
    finally:
        srv.stop()
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name == "/mmrec.v1.Recommender/Search"]
    assert len(calls) == 1 and calls[0].attributes["mmrec.request_id"] == "traced-1"
    stages = {s.name: s for s in spans if s.name.startswith("mmrec.")}
    assert set(stages) == {"mmrec.encode", "mmrec.retrieve", "mmrec.rerank", "mmrec.explain"}
    for span in stages.values():   # children of the call's span, across the lane's thread
        assert span.parent is not None and span.parent.span_id == calls[0].context.span_id
