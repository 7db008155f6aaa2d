"""RecordEvents, Recommend and DeleteUser end to end over loopback gRPC (real server, real
stores, tiny random models): live events drive recommendations, bad input gets the right
status, and erasure leaves nothing of the user."""

from __future__ import annotations

import grpc
import pytest

from engine.client import MmrecClient
from engine.domain import Erasure, InvalidInput
from engine.runtime.engine import Engine
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import ServerThread
from tests.test_service import status_of, upsert

ITEMS = [pb.Item(id=f"i{k}", title=title) for k, title in enumerate(
    ["red apple", "green pear", "mountain bike", "road bike", "blue vase", "clay pot"])]


def send(stub: pb_grpc.RecommenderStub, *events: pb.Event) -> pb.RecordEventsResponse:
    return stub.RecordEvents(iter(events), timeout=30)


def ev(user: str, item: str, kind: str = "view", ts: float = 0.0, **kw: object) -> pb.Event:
    return pb.Event(user_id=user, item_id=item, kind=kind, timestamp=ts, **kw)  # type: ignore[arg-type]


@pytest.fixture
def shop(stub: pb_grpc.RecommenderStub) -> pb_grpc.RecommenderStub:
    assert upsert(stub, *ITEMS).upserted == len(ITEMS)
    return stub


def ids(reply: pb.RecommendResponse) -> list[str]:
    return [r.id for r in reply.results]


def test_live_events_drive_recommendations(shop: pb_grpc.RecommenderStub, engine: Engine) -> None:
    reply = send(shop, ev("ann", "i0", ts=1), ev("ann", "i2", "purchase", ts=2),
                 ev("bob", "i2", ts=3))
    assert (reply.recorded, reply.users_updated, list(reply.rejected)) == (3, 2, [])
    cold = shop.Recommend(pb.RecommendRequest(user_id="nobody", top_k=2), timeout=30)
    assert cold.cold_start and ids(cold) == ["i2", "i0"]     # popularity: 4 + 1, then 1
    first = shop.Recommend(pb.RecommendRequest(user_id="ann", top_k=3, explain=True), timeout=30)
    assert not first.cold_start and first.strategy == "profile"
    assert len(first.results) == 3 and not {"i0", "i2"} & set(ids(first))
    assert all(r.explanation.because_of for r in first.results)
    assert set(first.results[0].explanation.because_of) <= {"i0", "i2"}
    top = first.results[0].id
    send(shop, ev("ann", top, "click", ts=4))                 # a new event ...
    second = shop.Recommend(pb.RecommendRequest(user_id="ann", top_k=3), timeout=30)
    assert top not in ids(second)                             # ... changes the next answer
    profile = engine.profiles.get("ann", tenant="default")
    assert profile is not None and profile.seen == ("i0", "i2", top)
    seen_too = shop.Recommend(pb.RecommendRequest(user_id="ann", top_k=6, include_seen=True),
                              timeout=30)
    assert "i0" in ids(seen_too)


def test_bad_events_are_reported_and_the_rest_recorded(shop: pb_grpc.RecommenderStub) -> None:
    reply = send(shop, ev("ann", "i0"), ev("", "i1"), ev("ann", "ghost"), ev("ann", "i1", "zap"),
                 ev("ann", "i1", tenant="t" * 200), ev("ann", "i3"))
    assert reply.recorded == 2 and reply.users_updated == 1
    assert [r.index for r in reply.rejected] == [1, 2, 3, 4]
    reasons = [r.reason for r in reply.rejected]
    assert "user_id must not be empty" in reasons[0]
    assert "unknown item 'ghost'" in reasons[1]
    assert "unknown event kind 'zap'" in reasons[2]
    assert "tenant is 200 characters" in reasons[3]


def test_recommend_validation_statuses(shop: pb_grpc.RecommenderStub) -> None:
    bad = {
        "whom": pb.RecommendRequest(),
        "top_k": pb.RecommendRequest(user_id="a", top_k=51),
        "diversity": pb.RecommendRequest(user_id="a", diversity=1.5),
        "channel": pb.RecommendRequest(user_id="a", hybrid=pb.HybridParams(
            channel_weights={"nonsense": 1.0})),
        "budget": pb.RecommendRequest(user_id="a", rerank_budget_ms=120_000),
        "positives": pb.RecommendRequest(positive_ids=[""]),
    }
    for name, request in bad.items():
        code, message = status_of(shop.Recommend, request, timeout=30)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, message)
        assert message
    code, message = status_of(shop.Recommend, pb.RecommendRequest(user_id="a", rerank=True),
                              timeout=30)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "LLM is not loaded" in message
    code, _ = status_of(shop.DeleteUser, pb.DeleteUserRequest(), timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_positive_ids_context_and_diversity(shop: pb_grpc.RecommenderStub) -> None:
    reply = shop.Recommend(pb.RecommendRequest(positive_ids=["i2"], negative_ids=["i4"], top_k=3,
                                               context="bike", diversity=0.5,
                                               strategy=pb.RECOMMEND_STRATEGY_BEST_SCORE),
                           timeout=30)
    assert reply.strategy == "best_score" and len(reply.results) == 3
    assert not {"i2", "i4"} & set(ids(reply))
    assert "lexical" in reply.channels and "fused" in reply.channels


def test_delete_user_leaves_nothing(server: ServerThread, shop: pb_grpc.RecommenderStub,
                                    engine: Engine) -> None:
    with MmrecClient(server.target) as client:
        from engine.domain import Event

        report = client.record_events([Event("eve", "i1", "like", 0, 1.0),
                                       Event("eve", "i3", "view", 0, 2.0)])
        assert report.recorded == 2
        assert not client.recommend(user_id="eve", top_k=2).cold_start
        erased = client.delete_user("eve")
        assert erased == Erasure(events=2, seen=2, profile=True, cache_entries=1)
        assert client.recommend(user_id="eve", top_k=2).cold_start
        assert engine.users.get("eve", tenant="default") is None
        assert all(r.user_id != "eve" for r in engine.users.users())
        again = client.delete_user("eve")
        assert (again.events, again.profile) == (0, False)


def test_client_recommend_knobs(server: ServerThread, shop: pb_grpc.RecommenderStub) -> None:
    """Recommend's knobs are client keywords too; the answer is a RecommendResult."""
    from engine.domain import ItemFilter, RecommendResult

    with MmrecClient(server.target) as client:
        result = client.recommend(positive_ids=["i2"], negative_ids=["i4"], top_k=3,
                                  context="bike", strategy="best_score", fusion="dbsf",
                                  weights={"lexical": 2.0}, candidates=20, diversity=0.5,
                                  filter=ItemFilter(exclude_ids=("i3",)), explain=True)
        assert isinstance(result, RecommendResult)
        assert (result.strategy, result.fusion, result.cold_start) == ("best_score", "dbsf", False)
        assert len(result.hits) == 3 and not {"i2", "i3", "i4"} & {h.record.id for h in result.hits}
        assert result.explanations is not None and len(result.explanations) == 3
        with pytest.raises(InvalidInput) as err:
            client.recommend(user_id="a", weights={"nonsense": 1.0})
        assert err.value.status == "INVALID_ARGUMENT" and "nonsense" in str(err.value)
