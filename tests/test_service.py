"""The gRPC service end to end over loopback: real server, real store, tiny random models."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.domain import FailedPrecondition, InvalidInput, NotFound, RemoteError, Unavailable
from engine.runtime.engine import Engine
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, make_config, png_bytes

APPLE = pb.Item(id="apple", title="Red apple", text="A shiny red apple from the orchard.",
                attributes={"price": 1.5, "tags": ["fruit"]})
BIKE = pb.Item(id="bike", title="Mountain bike", text="Full suspension bike for rough trails.")
PHOTO = pb.Item(id="photo", image=png_bytes(7))          # image only: found through CLIP
BOTH = pb.Item(id="both", title="Blue vase", image=png_bytes(8))


def upsert(stub: pb_grpc.RecommenderStub, *items: pb.Item) -> pb.UpsertItemsResponse:
    return stub.UpsertItems(iter([pb.UpsertItemsRequest(item=i) for i in items]), timeout=60)


def status_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), info.value.details()


@pytest.fixture
def filled(stub: pb_grpc.RecommenderStub) -> pb_grpc.RecommenderStub:
    response = upsert(stub, APPLE, BIKE, PHOTO, BOTH)
    assert response.upserted == 4 and not response.rejected
    return stub


def test_health_and_reflection(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "mmrec.v1.Recommender"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(reflect.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert {"mmrec.v1.Recommender", "grpc.health.v1.Health"} <= names


def test_text_search_finds_exact_item_first(filled: pb_grpc.RecommenderStub) -> None:
    reply = filled.Search(pb.SearchRequest(text="Red apple. A shiny red apple from the orchard.",
                                           top_k=3, explain=True), timeout=30)
    assert reply.results[0].id == "apple"
    channels = reply.results[0].explanation.channels
    for dense in ("fused", "clip", "text"):  # the exact text: cosine 1 in every dense channel
        assert channels[dense].rank == 1
        assert channels[dense].score == pytest.approx(1.0, abs=1e-4)
    assert channels["lexical"].rank == 1
    assert reply.fusion == "rrf"
    assert reply.results[0].score == pytest.approx(4 / 60, abs=1e-6)  # RRF, k=60, 0-based ranks
    assert len(reply.results) == 3
    assert list(reply.channels) == ["fused", "clip", "text", "lexical"]
    scores = [r.score for r in reply.results]
    assert scores == sorted(scores, reverse=True)
    top = reply.results[0].item
    assert top.title == "Red apple" and top.attributes["price"] == 1.5
    assert not top.image


def test_image_search_finds_image_item_first(filled: pb_grpc.RecommenderStub) -> None:
    reply = filled.Search(pb.SearchRequest(image=png_bytes(7), top_k=2, explain=True), timeout=30)
    assert reply.results[0].id == "photo"
    assert reply.results[0].explanation.channels["clip"].score == pytest.approx(1.0, abs=1e-4)
    # An image query fills the fused vector with its CLIP part alone: searched once, as clip.
    assert list(reply.channels) == ["clip", "fused (folded into clip)"]


def test_default_top_k_and_tenants(filled: pb_grpc.RecommenderStub) -> None:
    assert len(filled.Search(pb.SearchRequest(text="anything"), timeout=30).results) == 4
    other = pb.Item(id="apple", tenant="shop-b", title="Green apple")
    assert upsert(filled, other).upserted == 1
    reply = filled.Search(pb.SearchRequest(text="apple", tenant="shop-b", top_k=10), timeout=30)
    assert [(r.id, r.item.tenant, r.item.title) for r in reply.results] == [
        ("apple", "shop-b", "Green apple")]


def test_upsert_rejects_bad_items_and_keeps_good_ones(stub: pb_grpc.RecommenderStub) -> None:
    response = upsert(
        stub,
        APPLE,
        pb.Item(id="", title="no id"),
        pb.Item(id="broken", title="x", image=b"\x89PNG\r\n\x1a\nnot really"),
        pb.Item(id="empty"),
        BIKE,
        pb.Item(id="apple", title="Red apple v2", text="replaced"),
    )
    assert response.upserted == 2  # the two copies of "apple" are one item
    assert [(r.index, r.id) for r in response.rejected] == [(1, ""), (2, "broken"), (3, "empty")]
    reasons = [r.reason for r in response.rejected]
    assert "no `id`" in reasons[0]
    assert "could not be decoded" in reasons[1] or "corrupt" in reasons[1]
    assert "no title, no text and no image" in reasons[2]
    items = stub.GetItems(pb.GetItemsRequest(ids=["apple", "bike"]), timeout=10).items
    assert [(i.id, i.title) for i in items] == [("apple", "Red apple v2"),
                                                ("bike", "Mountain bike")]
    info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert info.item_count == 2


def test_get_and_delete(filled: pb_grpc.RecommenderStub) -> None:
    items = filled.GetItems(pb.GetItemsRequest(ids=["bike", "apple"]), timeout=10).items
    assert [i.id for i in items] == ["bike", "apple"]
    code, message = status_of(filled.GetItems, pb.GetItemsRequest(ids=["apple", "nope"]))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in message
    reply = filled.DeleteItems(pb.DeleteItemsRequest(ids=["apple", "ghost"]), timeout=10)
    assert reply.deleted == 1 and list(reply.missing_ids) == ["ghost"]
    code, _ = status_of(filled.GetItems, pb.GetItemsRequest(ids=["apple"]))
    assert code == grpc.StatusCode.NOT_FOUND
    assert filled.GetInfo(pb.GetInfoRequest(), timeout=10).item_count == 3


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (pb.SearchRequest(), "query is empty"),
        (pb.SearchRequest(text="   "), "query is empty"),
        (pb.SearchRequest(text="x", top_k=51), "top_k 51 is out of range"),
        (pb.SearchRequest(text="x" * 201), "limit is 200"),
        (pb.SearchRequest(image=b"definitely not an image"), "could not be decoded"),
        (pb.SearchRequest(image=png_bytes(1)[:60]), "corrupt or truncated"),
        (pb.SearchRequest(image=b"\0" * 200_001), "the limit is 200,000"),
        (pb.SearchRequest(text="x", tenant="t" * 129), "tenant"),
    ],
)
def test_search_validation(stub: pb_grpc.RecommenderStub, request_: pb.SearchRequest,
                           needle: str) -> None:
    code, message = status_of(stub.Search, request_, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in message


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (pb.GetItemsRequest(), "`ids` is empty"),
        (pb.GetItemsRequest(ids=["a", ""]), "empty id"),
        (pb.GetItemsRequest(ids=[str(i) for i in range(21)]), "limit is 20"),
    ],
)
def test_ids_validation(stub: pb_grpc.RecommenderStub, request_: pb.GetItemsRequest,
                        needle: str) -> None:
    code, message = status_of(stub.GetItems, request_, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in message
    delete = pb.DeleteItemsRequest(ids=request_.ids)
    code, message = status_of(stub.DeleteItems, delete, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in message


def test_info(stub: pb_grpc.RecommenderStub) -> None:
    info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    channels = {c.name: (c.dim, c.enabled) for c in info.channels}
    assert channels["fused"][0] == channels["clip"][0] + channels["text"][0]
    assert channels.pop("behaviour") == (65, False)       # no sequential model trained yet
    assert channels.pop("cooccurrence") == (257, False)
    assert all(enabled for _, enabled in channels.values())
    models = {m.role: m for m in info.models}
    assert not models["behaviour"].loaded and "mmrec train-seq" in models["behaviour"].reason
    assert models["clip"].loaded and "random weights" in models["clip"].name
    assert models["text"].loaded and info.device == "cpu" and info.item_count == 0
    assert "qdrant-edge" in info.store


class FakeSlowStore:
    """A fake that delays searches, to inject the one fault real parts cannot: slowness."""

    def __init__(self, real, delay: float) -> None:  # type: ignore[no-untyped-def]
        self.real, self.delay = real, delay

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.real, name)

    def hybrid_search(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        return self.real.hybrid_search(*args, **kwargs)


def test_deadline_is_honoured(engine: Engine, tiny_config: EngineConfig) -> None:
    engine.store = FakeSlowStore(engine.store, delay=1.5)  # type: ignore[assignment]
    srv = ServerThread(engine, tiny_config)
    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            stub.GetInfo(pb.GetInfoRequest(), timeout=10)
            started = time.perf_counter()
            code, _ = status_of(stub.Search, pb.SearchRequest(text="slow"), timeout=0.4)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.perf_counter() - started < 1.2
            # The service still answers while the abandoned work finishes.
            assert stub.GetInfo(pb.GetInfoRequest(), timeout=5).version
    finally:
        srv.stop()


@pytest.fixture
def server_without_clip(tmp_path: Path, tiny_text_dir: Path) -> Iterator[ServerThread]:
    config = make_config(tmp_path / "no-clip", tiny_text_dir)
    eng = Engine.from_config(config)
    srv = ServerThread(eng, config)
    yield srv
    srv.stop()
    eng.close()


def test_without_clip_weights(server_without_clip: ServerThread) -> None:
    with MmrecClient(server_without_clip.target) as client:
        info = client.info()
        clip = next(m for m in info.models if m.role == "clip")
        assert not clip.loaded and "no weights" in clip.reason.lower()
        assert {c.name: c.enabled for c in info.channels} == {
            "fused": True, "clip": False, "text": True, "lexical": True, "behaviour": False,
            "cooccurrence": False}
        report = client.upsert_items([(pb_item_record("doc", "A wooden chair"), png_bytes(3))])
        assert report.upserted == 1
        reply = client.search(text="A wooden chair", top_k=1)
        # Without CLIP the fused query vector is the text one: searched once, as text.
        assert reply.channels == ["text", "lexical", "fused (folded into text)"]
        assert reply.hits[0].record.id == "doc"
        with pytest.raises(FailedPrecondition) as err:
            client.search(image=png_bytes(3))
        assert err.value.status == "FAILED_PRECONDITION"
        assert "CLIP channel, which is off" in str(err.value)
        report = client.upsert_items([(pb_item_record("pic", ""), png_bytes(4))])
        assert report.upserted == 0 and "CLIP channel, which is off" in report.rejected[0][2]


def pb_item_record(item_id: str, title: str):  # type: ignore[no-untyped-def]
    from engine.domain import ItemRecord

    return ItemRecord(id=item_id, title=title)


def test_client_round_trip(server: ServerThread) -> None:
    with MmrecClient(server.target) as client:
        client.wait_ready(timeout=10)
        from engine.domain import ItemRecord

        record = ItemRecord(id="lamp", title="Desk lamp", text="LED desk lamp",
                            attributes={"colour": "black", "watts": 6})
        assert client.upsert_items([(record, None)]).upserted == 1
        [got] = client.get_items(["lamp"])
        assert got == record and type(got.attributes["watts"]) is int
        reply = client.search(text="Desk lamp. LED desk lamp", top_k=1)
        assert reply.hits[0].record == record
        assert client.delete_items(["lamp", "x"]) == (1, ["x"])


def test_client_search_knobs(server: ServerThread, filled: pb_grpc.RecommenderStub) -> None:
    """Every Search knob is a client keyword; filters are domain types, the answer a
    SearchResult."""
    from engine.domain import InvalidInput, ItemFilter, Match, MatchAny, Range, SearchResult

    with MmrecClient(server.target) as client:
        fruit = ItemFilter(must=(Match("tags", "fruit"),))
        result = client.search(text="bike", top_k=3, filter=fruit, fusion="dbsf",
                               weights={"clip": 0.0}, candidates=10, explain=True)
        assert isinstance(result, SearchResult)
        assert result.fusion == "dbsf"
        assert [h.record.id for h in result.hits] == ["apple"]
        assert result.explanations is not None and "clip" not in result.explanations[0].channels
        assert client.search(text="apple", filter=ItemFilter(
            must=(Range("price", lt=1.0),))).hits == []
        assert [h.record.id for h in client.search(text="apple", filter=ItemFilter(
            must=(MatchAny("tags", ("fruit", "veg")), Range("price", gte=1.5))))
                .hits] == ["apple"]
        rest = client.search(text="Red apple", top_k=5, rrf_k=10,
                             filter=ItemFilter(must_not=(Match("tags", "fruit"),),
                                               exclude_ids=("bike",)))
        assert {h.record.id for h in rest.hits} == {"photo", "both"}
        with pytest.raises(InvalidInput, match="unknown fusion"):
            client.search(text="x", fusion="borda")  # type: ignore[arg-type]


def test_service_writes_start_a_background_index_build(tmp_path: Path, tiny_text_dir: Path
                                                       ) -> None:
    config = make_config(tmp_path / "store", tiny_text_dir).model_copy(deep=True)
    config.store.optimize_after = 3
    eng = Engine.from_config(config)
    first_shard = eng.store.shard_path  # type: ignore[attr-defined]
    srv = ServerThread(eng, config)
    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            assert upsert(stub, APPLE, BIKE).upserted == 2
            assert eng.store.shard_path == first_shard  # type: ignore[attr-defined]
            assert upsert(stub, pb.Item(id="c", title="Chair")).upserted == 1
            deadline = time.monotonic() + 60
            while eng.store.shard_path == first_shard and time.monotonic() < deadline:  # type: ignore[attr-defined]
                reply = stub.Search(pb.SearchRequest(text="Chair", top_k=1), timeout=10)
                assert reply.results[0].id == "c"  # served throughout the build
                time.sleep(0.05)
            assert eng.store.shard_path != first_shard  # type: ignore[attr-defined]
            assert stub.GetInfo(pb.GetInfoRequest(), timeout=10).item_count == 3
    finally:
        srv.stop()
        eng.close()


def test_the_client_raises_the_domain_error_of_each_status(server: ServerThread) -> None:
    """INVALID_ARGUMENT, NOT_FOUND and UNAVAILABLE come back as the domain errors they stand
    for, with the server's message and the status name; a status no domain error stands for
    (DEADLINE_EXCEEDED) is a RemoteError."""
    with MmrecClient(server.target) as client:
        with pytest.raises(InvalidInput) as bad:
            client.search(text="x", top_k=100_000)
        assert bad.value.status == "INVALID_ARGUMENT" and "top_k 100000" in str(bad.value)
        with pytest.raises(NotFound) as missing:
            client.get_items(["no-such-item"])
        assert missing.value.status == "NOT_FOUND" and "no-such-item" in str(missing.value)
    with MmrecClient(server.target, timeout=1e-6) as hurried, pytest.raises(RemoteError) as late:
        hurried.search(text="x")
    assert late.value.status == "DEADLINE_EXCEEDED"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    with MmrecClient(closed, timeout=5) as nobody, pytest.raises(Unavailable) as down:
        nobody.info()
    assert down.value.status == "UNAVAILABLE"
