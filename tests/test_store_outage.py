"""A Qdrant server outage: retries with backoff and jitter, UNAVAILABLE with what to check,
and the gRPC health status following the store, all without a restart.

The one fake is the fault: :class:`FakeOutageClient` is a real ``QdrantClient(":memory:")``
that, while ``down`` is set, raises what the real client raises on a dead server (measured
against a closed port: gRPC ``UNAVAILABLE`` "failed to connect to all addresses ...
Connection refused" with ``prefer_grpc``, ``ResponseHandlingException(ConnectError(...))``
over REST). Everything else is real: ServerStore, the engine, the gRPC server on loopback.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from engine.domain import ItemRecord, Unavailable
from engine.runtime.engine import Engine
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from engine.service.server import SERVICE_NAME
from engine.store import ServerStore
from engine.store.retry import GaveUp, RetryPolicy, deadline_scope
from engine.store.server.client import transient
from tests.conftest import ServerThread, make_config
from tests.store_fixtures import SCHEMA, TENANT, item

REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:6334: "
           "Failed to connect to remote host: Connection refused")


class FakeUnavailableRpcError(grpc.RpcError, grpc.Call):
    """The error qdrant-client's gRPC transport raises when nothing listens (UNAVAILABLE)."""

    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                 details: str = REFUSED) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


STORE_CALLS = ("collection_exists", "get_collection", "create_collection", "create_payload_index",
               "retrieve", "upsert", "update_vectors", "batch_update_points", "query_batch_points",
               "delete", "count", "scroll")
"""Every QdrantClient method the server stores call."""


class FakeOutageClient(QdrantClient):
    """A local-mode QdrantClient whose server can be switched off: while ``down`` is set,
    every store call fails as against a dead server (gRPC UNAVAILABLE and REST connection
    refused, alternately) and is counted in ``refused``. Calls are serialised (local mode is
    not thread-safe, and the health probe runs beside the requests)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.down = False
        self.refused = 0
        self.lock = threading.Lock()

    def refuse(self) -> None:
        """Raise the next dead-server error."""
        self.refused += 1
        if self.refused % 2:
            raise FakeUnavailableRpcError()
        raise ResponseHandlingException(httpx.ConnectError("[Errno 111] Connection refused"))


def _outage_aware(name: str) -> Callable[..., Any]:
    real = getattr(QdrantClient, name)

    @functools.wraps(real)
    def call(self: FakeOutageClient, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            if self.down:
                self.refuse()
            return real(self, *args, **kwargs)

    return call


for _name in STORE_CALLS:
    setattr(FakeOutageClient, _name, _outage_aware(_name))


class FakeClock:
    """A monotonic clock and sleep that only move when told: no real waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def failing(clock: FakeClock, times: int, took: float = 0.0,
            error: Exception | None = None) -> Callable[[], str]:
    """A call that fails ``times`` times (each taking ``took`` seconds), then answers."""
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        clock.now += took
        if calls["n"] <= times:
            raise error or FakeUnavailableRpcError()
        return "ok"

    return call


def policy(clock: FakeClock, **kwargs: Any) -> RetryPolicy:
    return RetryPolicy(sleep=clock.sleep, clock=clock, **kwargs)


# ---------------------------------------------------------------------- the backoff itself
def test_retries_until_the_call_succeeds() -> None:
    clock = FakeClock()
    assert policy(clock, attempts=4).run(failing(clock, 3), transient) == "ok"
    assert len(clock.sleeps) == 3


def test_gives_up_after_the_configured_attempts() -> None:
    clock = FakeClock()
    with pytest.raises(GaveUp) as caught:
        policy(clock, attempts=3, total_seconds=60).run(failing(clock, 99), transient)
    assert caught.value.attempts == 3 and caught.value.why == "attempts"
    assert len(clock.sleeps) == 2  # no wait after the last attempt
    assert isinstance(caught.value.last, FakeUnavailableRpcError)


def test_waits_are_full_jitter_under_a_doubling_cap() -> None:
    clock = FakeClock()
    retry = policy(clock, base_delay=0.05, max_delay=0.3, jitter=random.Random(7).uniform)
    assert [retry.cap(n) for n in range(1, 6)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    for n in range(1, 6):
        waits = [retry.delay(n) for _ in range(400)]
        assert all(0.0 <= w <= retry.cap(n) for w in waits)
        # Uniform over the whole range, not a fixed fraction of the cap.
        assert min(waits) < 0.1 * retry.cap(n) and max(waits) > 0.9 * retry.cap(n)
    top = policy(clock, attempts=5, base_delay=0.05, max_delay=0.3, jitter=lambda lo, hi: hi)
    top.run(failing(clock, 4), transient)
    assert clock.sleeps == [0.05, 0.1, 0.2, 0.3]


def test_the_request_deadline_bounds_the_retries() -> None:
    clock = FakeClock()
    retry = policy(clock, attempts=100, base_delay=0.05, max_delay=0.2, total_seconds=60,
                   margin=0.05, jitter=lambda lo, hi: hi)
    deadline = clock.now + 1.0
    with deadline_scope(deadline), pytest.raises(GaveUp) as caught:
        retry.run(failing(clock, 10_000, took=0.01), transient)
    assert caught.value.why == "deadline"
    # The last attempt ended before the deadline less the margin, with room for no more.
    assert clock.now <= deadline - 0.05
    assert clock.now + 0.2 + 0.01 > deadline - 0.05
    assert 3 < caught.value.attempts < 100


def test_without_a_deadline_the_total_time_bounds_the_retries() -> None:
    clock = FakeClock()
    start = clock.now
    with pytest.raises(GaveUp) as caught:
        policy(clock, attempts=1000, base_delay=0.1, max_delay=0.5, total_seconds=2.0,
               jitter=lambda lo, hi: hi).run(failing(clock, 10_000), transient)
    assert caught.value.why == "total time" and clock.now - start <= 2.0


def test_errors_that_are_not_transport_failures_are_not_retried() -> None:
    clock = FakeClock()
    bad = FakeUnavailableRpcError(grpc.StatusCode.INVALID_ARGUMENT, "wrong vector size")
    with pytest.raises(FakeUnavailableRpcError):
        policy(clock).run(failing(clock, 1, error=bad), transient)
    assert clock.sleeps == []


@pytest.mark.parametrize(("error", "retried"), [
    (FakeUnavailableRpcError(), True),
    (FakeUnavailableRpcError(grpc.StatusCode.DEADLINE_EXCEEDED), True),
    (FakeUnavailableRpcError(grpc.StatusCode.NOT_FOUND), False),
    (ResponseHandlingException(httpx.ConnectError("refused")), True),
    (UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers()), True),
    (UnexpectedResponse(404, "Not Found", b"", httpx.Headers()), False),
    (ConnectionResetError("reset"), True),
    (ValueError("a bug"), False),
])
def test_which_errors_are_transient(error: BaseException, retried: bool) -> None:
    assert transient(error) is retried


# ------------------------------------------------------------------- the server store
def test_server_store_rides_out_a_short_outage_and_names_a_long_one() -> None:
    client = FakeOutageClient()
    clock = FakeClock()

    def come_back(seconds: float) -> None:  # the server returns during the second wait
        clock.sleep(seconds)
        if len(clock.sleeps) == 2:
            client.down = False

    store = ServerStore(client, SCHEMA, collection="outage",
                        retry=RetryPolicy(attempts=4, total_seconds=60, sleep=come_back,
                                          clock=clock))
    store.upsert([item("a", 0)])
    assert store.reachable()
    client.down = True
    assert not store.reachable()
    assert [r.id for r in store.get(["a"], tenant=TENANT)] == ["a"]
    assert client.refused == 1 + 2  # the probe, then two refused attempts
    client.down = True
    with pytest.raises(Unavailable) as caught:
        store.count()
    message = str(caught.value)
    assert "Qdrant server at :memory: is unreachable" in message
    assert "4 attempts" in message and "Check that the Qdrant server is running" in message
    client.down = False
    assert store.reachable() and store.count() == 1
    store.close()


# ------------------------------------------------------------- through the gRPC service
@pytest.fixture
def outage(tmp_path: Path, tiny_text_dir: Path) -> Iterator[tuple[FakeOutageClient, ServerThread]]:
    """The service on a ServerStore over a FakeOutageClient, probing its store every 0.1 s."""
    config = make_config(tmp_path / "store", tiny_text_dir)
    config.service.health_probe_seconds = 0.1
    engine = Engine.from_config(config)
    client = FakeOutageClient()
    edge, engine.store = engine.store, ServerStore(
        client, engine.schema, collection="outage",
        retry=RetryPolicy(attempts=1000, base_delay=0.01, max_delay=0.1, total_seconds=30))
    edge.close()
    server = ServerThread(engine, config)
    yield client, server
    server.stop()
    engine.close()


def health_of(channel: grpc.Channel) -> list[int]:
    stub = health_pb2_grpc.HealthStub(channel)
    return [stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status
            for name in ("", SERVICE_NAME)]


def wait_for_health(channel: grpc.Channel, status: int, timeout: float = 5.0) -> float:
    """Seconds until both health names report ``status``."""
    start = time.monotonic()
    while health_of(channel) != [status, status]:
        assert time.monotonic() - start < timeout, f"health never became {status}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_outage_is_unavailable_and_not_serving_then_recovers_without_restart(
        outage: tuple[FakeOutageClient, ServerThread]) -> None:
    client, server = outage
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        item_pb = pb.Item(id="lamp", title="Desk lamp")
        assert stub.UpsertItems(iter([pb.UpsertItemsRequest(item=item_pb)]), timeout=30).upserted
        search = pb.SearchRequest(text="Desk lamp", top_k=1)
        assert [r.id for r in stub.Search(search, timeout=30).results] == ["lamp"]
        wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)

        client.down = True
        wait_for_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
        refused = client.refused
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(search, timeout=1.0)
        elapsed = time.monotonic() - start
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
        details = caught.value.details()
        assert "Qdrant server at :memory: is unreachable" in details
        assert "stopped by the deadline" in details and "store.url" in details
        assert elapsed < 1.0  # the store's error, before the deadline: retries were bounded
        assert client.refused - refused > 3  # and it did retry meanwhile

        client.down = False
        wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)
        assert [r.id for r in stub.Search(search, timeout=30).results] == ["lamp"]
        assert stub.GetItems(pb.GetItemsRequest(ids=["lamp"]), timeout=30).items[0].title == \
            ItemRecord(id="lamp", title="Desk lamp").title
