"""Regression tests for the bad input that reached INTERNAL or UNKNOWN, or lost events.

Each case is one a hostile or careless client found (issue 12's defect list):
unknown enum values, integers past 2^63 in filters, NaN and Infinity where
numbers must be finite, undecodable bytes on every RPC, and event streams that
dropped or half-stored good events. Every answer must be INVALID_ARGUMENT with
an actionable message, or, for a stream, a per-message report with every good
message stored. Real server on loopback, real store, tiny random models.
"""

from __future__ import annotations

import math
import time

import grpc
import pytest
from google.protobuf import struct_pb2

from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import ServerThread
from tests.test_service import status_of, upsert

SERVICE = "/mmrec.v1.Recommender/"
UNARY = ["Search", "GetItems", "DeleteItems", "GetInfo", "Recommend", "DeleteUser"]
GARBAGE = [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28"]  # bad tag, truncated, bad UTF-8


def items(n: int, prefix: str = "good") -> list[pb.Item]:
    return [pb.Item(id=f"{prefix}-{i}", title=f"Item {i}", text="plain text") for i in range(n)]


def test_undecodable_bytes_on_unary_rpcs_are_invalid_argument(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        for method in UNARY:
            call = channel.unary_unary(SERVICE + method)  # bytes in, bytes out
            # GetInfoRequest has no string field: bytes in field 1 are an unknown field, legal
            for raw in GARBAGE if method != "GetInfo" else GARBAGE[:2]:
                code, message = status_of(call, raw, timeout=10)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, raw, code, message)
                assert "not a valid" in message and "Request" in message


def test_undecodable_messages_in_streams_are_reported_and_the_rest_kept(
        server: ServerThread, stub: pb_grpc.RecommenderStub) -> None:
    good = [pb.UpsertItemsRequest(item=i).SerializeToString() for i in items(3)]
    with grpc.insecure_channel(server.target) as channel:
        reply = pb.UpsertItemsResponse.FromString(channel.stream_unary(SERVICE + "UpsertItems")(
            iter([good[0], GARBAGE[0], good[1], GARBAGE[2], good[2]]), timeout=30))
        assert reply.upserted == 3
        assert [r.index for r in reply.rejected] == [1, 3]
        assert "not a valid UpsertItemsRequest" in reply.rejected[0].reason
        events = [pb.Event(user_id="u", item_id=f"good-{i}", kind="view").SerializeToString()
                  for i in range(3)]
        reply = pb.RecordEventsResponse.FromString(channel.stream_unary(
            SERVICE + "RecordEvents")(iter([events[0], GARBAGE[1], events[1], events[2]]),
                                       timeout=30))
    assert reply.recorded == 3  # the events after the garbage are not dropped
    assert [(r.index, "not a valid Event" in r.reason) for r in reply.rejected] == [(1, True)]


@pytest.mark.parametrize("fusion", [3, 99])
def test_unknown_fusion_enum_is_invalid_argument(stub: pb_grpc.RecommenderStub,
                                                 fusion: int) -> None:
    upsert(stub, *items(2))
    for call, request in ((stub.Search, pb.SearchRequest(text="item")),
                          (stub.Recommend, pb.RecommendRequest(positive_ids=["good-0"]))):
        request.hybrid.fusion = fusion  # type: ignore[assignment]  # an unknown enum number
        code, message = status_of(call, request, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"unknown fusion {fusion}" in message and "FUSION_RRF" in message


def test_integers_past_what_a_filter_can_hold_are_invalid_argument(
        stub: pb_grpc.RecommenderStub) -> None:
    for value in (2.0**63, -(2.0**63), 1e300):
        equals = pb.Condition(key="year", equals=struct_pb2.Value(number_value=value))
        any_of = pb.Condition(key="year", any_of=pb.ValueList(values=[
            struct_pb2.Value(number_value=1.0), struct_pb2.Value(number_value=value)]))
        for condition in (equals, any_of):
            request = pb.SearchRequest(text="x", filter=pb.Filter(must=[condition]))
            code, message = status_of(stub.Search, request, timeout=10)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "2^53" in message, message


def test_non_finite_range_bounds_and_channel_weights_are_invalid_argument(
        stub: pb_grpc.RecommenderStub) -> None:
    for bound in (math.nan, math.inf, -math.inf):
        ranged = pb.SearchRequest(text="x", filter=pb.Filter(must=[pb.Condition(
            key="year", range=pb.NumericRange(gte=bound))]))
        code, message = status_of(stub.Search, ranged, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "finite" in message
        weighted = pb.SearchRequest(text="x", hybrid=pb.HybridParams(
            channel_weights={"text": bound}))
        code, message = status_of(stub.Search, weighted, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "finite" in message


def test_profile_as_a_channel_weight_says_which_channel_searches_the_profile(
        stub: pb_grpc.RecommenderStub) -> None:
    request = pb.RecommendRequest(user_id="u", hybrid=pb.HybridParams(
        channel_weights={"profile": 1.0}))
    code, message = status_of(stub.Recommend, request, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'fused'" in message


def test_a_non_finite_attribute_rejects_that_item_only(stub: pb_grpc.RecommenderStub) -> None:
    batch = items(70)
    poisoned = pb.Item(id="poisoned", title="Bad price")
    poisoned.attributes.update({"price": math.nan, "ok": "yes"})
    nested = pb.Item(id="nested", title="Bad nested")
    nested.attributes.update({"dims": {"w": [1.0, math.inf]}})
    negative = pb.Item(id="negative", title="Bad weight")
    negative.attributes.update({"weight": -math.inf})
    reply = upsert(stub, *batch[:64], poisoned, *batch[64:], nested, negative)
    assert reply.upserted == 70
    assert [(r.index, r.id) for r in reply.rejected] == [(64, "poisoned"), (71, "nested"),
                                                         (72, "negative")]
    assert "'price'" in reply.rejected[0].reason and "finite" in reply.rejected[0].reason
    assert "'dims.w[1]'" in reply.rejected[1].reason
    assert stub.GetInfo(pb.GetInfoRequest(), timeout=10).item_count == 70


def test_item_ids_are_stripped_everywhere(stub: pb_grpc.RecommenderStub) -> None:
    assert upsert(stub, pb.Item(id=" x ", title="Spaced")).upserted == 1
    assert [i.id for i in stub.GetItems(pb.GetItemsRequest(ids=["x"]), timeout=10).items] == ["x"]
    assert [i.id for i in stub.GetItems(pb.GetItemsRequest(ids=[" x"]), timeout=10).items] == [
        "x"]
    reply = stub.RecordEvents(iter([pb.Event(user_id=" u ", item_id=" x ", kind="view")]),
                              timeout=10)
    assert reply.recorded == 1 and not reply.rejected


BAD_EVENTS = [
    (pb.Event(user_id="u", item_id="good-1", kind="rating", value=1e20), "value"),
    (pb.Event(user_id="u", item_id="good-1", kind="view", timestamp=1e300), "timestamp"),
    (pb.Event(user_id="u", item_id="good-1", kind="view", timestamp=-5), "timestamp"),
]


def test_one_bad_event_is_reported_by_index_and_every_good_one_stored(
        stub: pb_grpc.RecommenderStub) -> None:
    upsert(stub, *items(5))
    good = [pb.Event(user_id=f"user-{i % 7}", item_id=f"good-{i % 5}", kind="view")
            for i in range(300)]
    for event, needle in BAD_EVENTS:
        reply = stub.RecordEvents(iter([*good[:150], event, *good[150:]]), timeout=30)
        assert reply.recorded == 300
        assert [r.index for r in reply.rejected] == [150] and needle in reply.rejected[0].reason
    seen = stub.Recommend(pb.RecommendRequest(user_id="user-0", include_seen=True, top_k=5,
                                              explain=True), timeout=30)
    assert not seen.cold_start and seen.results


def test_oversized_filters_and_budgets_are_refused_before_any_work(
        stub: pb_grpc.RecommenderStub) -> None:
    many = [pb.Condition(key=f"k{i}", equals=struct_pb2.Value(string_value="v"))
            for i in range(10_000)]
    started = time.monotonic()
    code, message = status_of(stub.Search, pb.SearchRequest(text="x", filter=pb.Filter(
        must=many[:40], must_not=many[40:])), timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "10000 conditions" in message
    assert time.monotonic() - started < 5  # was 37 s, blocking the whole server
    values = pb.ValueList(values=[struct_pb2.Value(string_value=str(i)) for i in range(1025)])
    code, message = status_of(stub.Search, pb.SearchRequest(text="x", filter=pb.Filter(
        must=[pb.Condition(key="tag", any_of=values)])), timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1025 values" in message
    for request in (pb.SearchRequest(text="x", rerank=True, rerank_budget_ms=60_000),
                    pb.SearchRequest(text="x", rerank=True, rerank_top_k=200)):
        code, message = status_of(stub.Search, request, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "server's limit" in message
