"""Prometheus metrics of the service: calls, latencies, stages, re-rank budget, lanes, store.

:class:`ServiceMetrics` owns one registry (not the process-wide default, so several servers
in one process, as in the tests, keep their own counts) and is fed by
:class:`engine.service.calls.CallInterceptor` once per finished call:

- ``mmrec_rpc_requests_total{rpc, code}``: finished calls by RPC and gRPC status name, codes
  set by ``context.abort`` included (UNAUTHENTICATED, INVALID_ARGUMENT, ...);
- ``mmrec_rpc_duration_seconds{rpc}``: a histogram of each call's server-side time;
- ``mmrec_stage_duration_seconds{rpc, stage}``: Search and Recommend stage times, from the
  ``stage_ms`` of their responses;
- ``mmrec_rerank_budget_exhausted_total{rpc}``: calls whose re-ranking the budget (or the
  deadline) cut short (``rerank_budget_exhausted`` in the response).

:class:`EngineCollector` computes gauges when Prometheus scrapes, in the HTTP server's
thread, never on the event loop: ``mmrec_lane_unfinished{lane}`` (calls running or queued
in each lane) and ``mmrec_lane_limit{lane}``, ``mmrec_store_items{tenant}`` and
``mmrec_store_users{tenant}`` for the tenants the service has served (at most
:data:`MAX_TENANTS`) plus ``mmrec_store_items_all`` / ``mmrec_store_users_all``,
``mmrec_index_building`` (an embedded store's background HNSW build) and ``mmrec_store_up``
(0 when those store reads failed). Store reads are cached for :data:`STORE_CACHE_SECONDS`,
so a busy scraper costs a few counts every few seconds. With query batching on,
``mmrec_query_batch_size`` is a histogram of the queries each forward pass of the query
encoders took, and ``mmrec_store_search_batch_size`` of the searches each store request
carried (``engine.batching``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.runtime import Engine
from engine.service.lanes import Lane
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
"""Seconds: from a cached lookup (1 ms) to a long LLM call (the largest budget is 5 s)."""
MAX_TENANTS = 64
"""Tenants whose item and user counts are exported; later ones are not (labels stay bounded)."""
STORE_CACHE_SECONDS = 5.0
"""How long one set of store counts answers scrapes."""
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Queries per forward pass; 1024 is the largest ``query_batching.max_batch``."""


class TenantCensus:
    """The tenants the service has served (a bounded set, shared by threads)."""

    def __init__(self, first: Iterable[str] = (), limit: int = MAX_TENANTS) -> None:
        self._names: dict[str, None] = dict.fromkeys(first)
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, tenant: str) -> None:
        """Count ``tenant`` from now on, unless the set is full."""
        if tenant in self._names or len(self._names) >= self._limit:
            return
        with self._lock:
            if len(self._names) < self._limit:
                self._names[tenant] = None

    def names(self) -> list[str]:
        """The tenants counted, in the order first served."""
        with self._lock:
            return list(self._names)


class ServiceMetrics:
    """The per-call metrics and their registry (see the module docstring for the names)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mmrec_rpc_requests", "Finished mmrec.v1 calls by RPC and "
                                "gRPC status code.", ["rpc", "code"], registry=self.registry)
        self.latency = Histogram("mmrec_rpc_duration_seconds", "Server-side time of a call.",
                                 ["rpc"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stages = Histogram("mmrec_stage_duration_seconds", "Time of one pipeline stage "
                                "(encode, retrieve, rerank, explain, ...) of a call.",
                                ["rpc", "stage"], buckets=LATENCY_BUCKETS,
                                registry=self.registry)
        self.budget_hits = Counter("mmrec_rerank_budget_exhausted", "Calls whose LLM re-ranking "
                                   "the budget or deadline cut short.", ["rpc"],
                                   registry=self.registry)

    def observe(self, rpc: str, code: str, seconds: float, response: object) -> None:
        """Count one finished call; a response with stage times adds them and any budget hit."""
        self.requests.labels(rpc, code).inc()
        self.latency.labels(rpc).observe(seconds)
        if isinstance(response, pb.SearchResponse | pb.RecommendResponse):
            for stage, ms in response.stage_ms.items():
                self.stages.labels(rpc, stage).observe(ms / 1000.0)
            if response.rerank_budget_exhausted:
                self.budget_hits.labels(rpc).inc()

    def watch(self, engine: Engine, lanes: Sequence[Lane], tenants: TenantCensus) -> None:
        """Export the scrape-time gauges of ``engine``'s store and ``lanes`` too."""
        self.registry.register(EngineCollector(engine, lanes, tenants))


@dataclass(frozen=True)
class StoreCounts:
    """One reading of the store, shared by the scrapes of a few seconds."""

    items: dict[str, int]
    users: dict[str, int]
    items_all: int
    users_all: int
    building: bool | None
    up: bool
    at: float


class EngineCollector(Collector):
    """Gauges computed at scrape time: lane depth, items and users per tenant, index state."""

    def __init__(self, engine: Engine, lanes: Sequence[Lane], tenants: TenantCensus) -> None:
        self.engine, self.lanes, self.tenants = engine, lanes, tenants
        self._counts: StoreCounts | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        """Every gauge, the store's from a cached reading."""
        unfinished = GaugeMetricFamily("mmrec_lane_unfinished", "Calls running or queued in a "
                                       "lane (past its limit, calls are RESOURCE_EXHAUSTED).",
                                       labels=["lane"])
        limit = GaugeMetricFamily("mmrec_lane_limit", "Calls a lane admits (workers + queue).",
                                  labels=["lane"])
        for lane in self.lanes:
            unfinished.add_metric([lane.name], lane.unfinished)
            limit.add_metric([lane.name], lane.limit)
        yield unfinished
        yield limit
        yield from self._batch_metrics()
        yield from self._store_metrics(self._store_counts())

    def _batch_metrics(self) -> Iterator[Metric]:
        """The histograms of query batch sizes (encoder passes, store requests), when batched."""
        batcher = self.engine.vectoriser.batcher
        if batcher is not None:
            yield _size_histogram("mmrec_query_batch_size", "Queries encoded together in one "
                                  "forward pass of the query encoders.", batcher.batch_sizes())
        searches = self.engine.store.search_batch_sizes()
        if searches:
            yield _size_histogram("mmrec_store_search_batch_size", "Hybrid searches sent to "
                                  "the store together in one request.", searches)

    def _store_counts(self) -> StoreCounts:
        """The cached reading, or a new one when it is older than STORE_CACHE_SECONDS."""
        with self._lock:
            now = time.monotonic()
            if self._counts is None or now - self._counts.at > STORE_CACHE_SECONDS:
                self._counts = self._read(now)
            return self._counts

    def _read(self, now: float) -> StoreCounts:
        """Count items and users per served tenant; a failing store reads as down."""
        store, users = self.engine.store, self.engine.users
        building = getattr(store, "optimizing", None)
        try:
            names = self.tenants.names()
            return StoreCounts(items={t: store.count(t) for t in names},
                               users={t: users.count(t) for t in names},
                               items_all=store.count(), users_all=users.count(),
                               building=building if isinstance(building, bool) else None,
                               up=True, at=now)
        except Exception as exc:  # any store failure: the gauge says so, the scrape goes on
            log.warning("metrics: the store did not answer its counts: %s", exc)
            return StoreCounts({}, {}, 0, 0, None, up=False, at=now)

    @staticmethod
    def _store_metrics(counts: StoreCounts) -> Iterator[Metric]:
        """The store's gauges from one reading."""
        up = GaugeMetricFamily("mmrec_store_up", "1 when the store answered the last counts.")
        up.add_metric([], 1.0 if counts.up else 0.0)
        yield up
        if not counts.up:
            return
        for kind, per_tenant, total in (("items", counts.items, counts.items_all),
                                        ("users", counts.users, counts.users_all)):
            family = GaugeMetricFamily(f"mmrec_store_{kind}", f"Stored {kind} of a tenant the "
                                       "service has served.", labels=["tenant"])
            for tenant, count in per_tenant.items():
                family.add_metric([tenant], count)
            yield family
            everything = GaugeMetricFamily(f"mmrec_store_{kind}_all",
                                           f"Stored {kind} of every tenant.")
            everything.add_metric([], total)
            yield everything
        if counts.building is not None:
            building = GaugeMetricFamily("mmrec_index_building", "1 while a background HNSW "
                                         "index build of the embedded store runs.")
            building.add_metric([], 1.0 if counts.building else 0.0)
            yield building


class MetricsEndpoint:
    """The HTTP server Prometheus scrapes (a daemon thread), and how to stop it."""

    def __init__(self, metrics: ServiceMetrics, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.server: WSGIServer = server
        self.thread: threading.Thread = thread
        self.port: int = server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _size_histogram(name: str, documentation: str, sizes: dict[int, int]) -> Metric:
    """A histogram of batch sizes from a batcher's ``{size: count}``."""
    buckets = [(str(bound), float(sum(n for size, n in sizes.items() if size <= bound)))
               for bound in BATCH_SIZE_BUCKETS]
    buckets.append(("+Inf", float(sum(sizes.values()))))
    return HistogramMetricFamily(name, documentation, buckets=buckets,
                                 sum_value=float(sum(size * n for size, n in sizes.items())))
