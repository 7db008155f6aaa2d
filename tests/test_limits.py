"""The bounds of ``[service.limits]`` a client meets: per-key call rate, stream length and
idleness, message size and image pixels. A real server on loopback, real keys; only the rate
limiter's unit test uses an injected clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from engine.config import AuthSettings, EngineConfig, LimitsSettings
from engine.domain import InvalidInput, Overloaded
from engine.encoders.images import decode_image
from engine.runtime.engine import Engine
from engine.service.keys import KeyFile, Role
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from engine.service.ratelimit import KeyRateLimiter
from engine.service.streams import END_METADATA
from tests.conftest import ServerThread, png_bytes


def limited(config: EngineConfig, auth: bool = False, **limits: Any) -> EngineConfig:
    """``config`` with ``service.limits`` changed (and auth on, when asked)."""
    service = config.service.model_copy(
        update={"limits": config.service.limits.model_copy(update=limits)})
    update: dict[str, Any] = {"service": service}
    if auth:
        update["auth"] = AuthSettings(enabled=True)
    return config.model_copy(update=update)


def serve(engine: Engine, config: EngineConfig) -> Iterator[pb_grpc.RecommenderStub]:
    """A stub on a server started with ``config``; the server stops after the test."""
    server = ServerThread(engine, config)
    try:
        with grpc.insecure_channel(server.target) as channel:
            yield pb_grpc.RecommenderStub(channel)
    finally:
        server.stop()


def test_the_bucket_allows_a_burst_then_refuses_with_the_wait_and_refills() -> None:
    now = [0.0]
    limiter = KeyRateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("k1")
    with pytest.raises(Overloaded, match=r"k1 is over its rate of 2 calls/s \(burst 3\): "
                                         r"retry in 500 ms"):
        limiter.take("k1")
    limiter.take("k2")  # another key has its own bucket
    now[0] = 0.5  # one token back
    limiter.take("k1")
    with pytest.raises(Overloaded):
        limiter.take("k1")
    now[0] = 100.0  # refills to the burst, not beyond
    for _ in range(3):
        limiter.take("k1")
    with pytest.raises(Overloaded):
        limiter.take("k1")


def test_rate_zero_means_no_limiter() -> None:
    assert KeyRateLimiter.from_limits(LimitsSettings(key_requests_per_second=0)) is None
    assert KeyRateLimiter.from_limits(LimitsSettings()) is not None


def test_a_key_over_its_rate_gets_resource_exhausted_and_others_go_on(
        engine: Engine, tiny_config: EngineConfig) -> None:
    config = limited(tiny_config, auth=True, key_requests_per_second=0.01, key_burst=2)
    keys = KeyFile(config.key_path())
    _, busy = keys.create(["default"], Role.READ)
    _, calm = keys.create(["default"], Role.READ)
    for stub in serve(engine, config):
        info = pb.GetInfoRequest()
        for _ in range(2):
            stub.GetInfo(info, metadata=(("authorization", f"Bearer {busy}"),), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetInfo(info, metadata=(("authorization", f"Bearer {busy}"),), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over its rate" in caught.value.details() and "retry in" in caught.value.details()
        stub.GetInfo(info, metadata=(("authorization", f"Bearer {calm}"),), timeout=10)


def test_a_stream_past_its_length_says_where_to_resume(
        engine: Engine, tiny_config: EngineConfig) -> None:
    for stub in serve(engine, limited(tiny_config, max_stream_messages=3)):
        items = (pb.UpsertItemsRequest(item=pb.Item(id=f"i{n}", title=f"item {n}"))
                 for n in range(5))
        reply, call = stub.UpsertItems.with_call(items, timeout=30)
        assert reply.upserted == 3
        assert [(r.index, "index 3" in r.reason) for r in reply.rejected] == [(3, True)]
        assert (END_METADATA, "length") in tuple(call.trailing_metadata())
        events = (pb.Event(user_id="u", item_id=f"i{n % 3}", kind="view") for n in range(5))
        answer, call = stub.RecordEvents.with_call(events, timeout=30)
        assert answer.recorded == 3 and [r.index for r in answer.rejected] == [3]
        assert (END_METADATA, "length") in tuple(call.trailing_metadata())
        found = stub.GetItems(pb.GetItemsRequest(ids=["i0", "i1", "i2"]), timeout=10)
        assert len(found.items) == 3


def test_an_idle_stream_is_answered_with_what_it_stored(
        engine: Engine, tiny_config: EngineConfig) -> None:
    def slow() -> Iterator[pb.UpsertItemsRequest]:
        yield pb.UpsertItemsRequest(item=pb.Item(id="first", title="first item"))
        time.sleep(2.0)  # the server stops waiting after 0.3 s
        yield pb.UpsertItemsRequest(item=pb.Item(id="late", title="late item"))

    for stub in serve(engine, limited(tiny_config, stream_idle_seconds=0.3)):
        started = time.monotonic()
        reply, call = stub.UpsertItems.with_call(slow(), timeout=30)
        assert time.monotonic() - started < 1.9  # answered before the late message
        assert reply.upserted == 1 and not reply.rejected
        assert (END_METADATA, "idle") in tuple(call.trailing_metadata())
        assert [i.id for i in stub.GetItems(pb.GetItemsRequest(ids=["first"]),
                                            timeout=10).items] == ["first"]


def test_a_message_over_the_size_limit_is_refused_by_grpc(
        engine: Engine, tiny_config: EngineConfig) -> None:
    for stub in serve(engine, limited(tiny_config, max_message_bytes=4096)):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(pb.SearchRequest(text="x" * 8000), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Search(pb.SearchRequest(text="bike"), timeout=10) is not None


def test_images_over_the_pixel_limit_are_refused_with_the_size() -> None:
    image = png_bytes(1, size=40)
    assert decode_image(image).size == (40, 40)
    with pytest.raises(InvalidInput, match=r"40x40 pixels, above the limit of 1,000"):
        decode_image(image, max_pixels=1000)
