"""Tenant isolation, property-tested: random request sequences over two tenants and two keys.

A Hypothesis state machine sends upserts, events, searches, recommendations (with explain,
include_seen, positives and negatives), gets, deletes, user erasures and GetInfo, for either
tenant, over real gRPC to a server with auth on, where key ``a`` is bound to tenant ``a`` and
key ``b`` to tenant ``b`` (made by :class:`engine.service.keys.KeyFile`, as `mmrec keys`
does). The same requests of each tenant also go to that tenant's own *shadow* server, which
never sees the other tenant. The invariant is differential and covers every shared
statistic at once (IDF of the lexical channel, popularity, co-occurrence, behaviour vectors,
profile caches): every answer the shared server gives a tenant is the answer its shadow
gives, results, scores and explanations included. So no read returns, counts or explains
the other tenant's items or users, no write or erasure touches them, and Recommend
positives and negatives naming the other tenant's ids behave exactly like ids that exist
nowhere. Besides: each result is the caller's tenant's, GetInfo counts the caller's items,
and requests naming the other tenant are refused (a unary call) or rejected by index (a
streamed message).

Both tenants use the same item ids and user names for part of their data, so a leak by id
cannot hide. Behaviour models (SASRec, co-occurrence) are trained offline for one tenant and
are not in the state machine: :func:`test_a_behaviour_model_serves_only_its_tenant` holds
them (the engine binds each model to the tenant it was trained for).

Deterministic (derandomized Hypothesis, explicit event timestamps). Sizes:
``MMREC_ISOLATION_EXAMPLES`` (default 5) state machine runs of ``MMREC_ISOLATION_STEPS``
(default 30) steps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from engine.behaviour import CooccurrenceModel
from engine.config import AuthSettings
from engine.domain import COOCCURRENCE, ItemInput, ItemRecord, RecommendRequest
from engine.runtime.engine import Engine
from engine.service.keys import KeyFile, Role
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, make_config
from tests.tiny_models import make_tiny_clip_settings

EXAMPLES = int(os.environ.get("MMREC_ISOLATION_EXAMPLES", "5"))
STEPS = int(os.environ.get("MMREC_ISOLATION_STEPS", "30"))
TIMEOUT = 30.0

TENANTS = ("a", "b")
SHARED_IDS = ("s0", "s1", "s2")
"""Item ids both tenants use, for items of different content."""
OWN_IDS = {"a": ("a0", "a1", "a2"), "b": ("b0", "b1", "b2")}
POOL = {t: SHARED_IDS + OWN_IDS[t] for t in TENANTS}
ALL_IDS = SHARED_IDS + OWN_IDS["a"] + OWN_IDS["b"]
USERS = ("u0", "u1", "u2")
WORDS = ("red", "apple", "bike", "trail", "lamp", "desk", "blue", "vase", "XK-4417", "river",
         "quiet", "storm", "jazz", "orchard", "steel")
KINDS = ("view", "click", "purchase", "like", "dislike", "rating")
OTHER = {"a": "b", "b": "a"}


def other(tenant: str) -> str:
    return OTHER[tenant]


@dataclass
class Outcome:
    """A call's status and, when OK, its reply."""

    code: grpc.StatusCode
    details: str
    reply: Any = None


def call(method: Any, request: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Outcome:
    """Send one request (an iterator for a streaming RPC) and return what came back."""
    try:
        return Outcome(grpc.StatusCode.OK, "", method(request, metadata=metadata,
                                                       timeout=TIMEOUT))
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "")


class World:
    """The shared server with auth on, one shadow server per tenant, and their stubs."""

    def __init__(self, folder: Path, text_dir: Path) -> None:
        clip = make_tiny_clip_settings()
        main_config = make_config(folder / "main", text_dir, clip).model_copy(
            update={"auth": AuthSettings(enabled=True)})
        self.main_engine = Engine.from_config(main_config)
        keys = KeyFile(main_config.key_path())
        self.metadata = {t: (("x-api-key", keys.create([t], Role.WRITE)[1]),) for t in TENANTS}
        self.engines = {t: Engine(make_config(folder / f"shadow-{t}", text_dir, clip),
                                  self.main_engine.models) for t in TENANTS}
        self.servers = [ServerThread(self.main_engine, main_config)] + [
            ServerThread(engine, engine.config) for engine in self.engines.values()]
        self.channels = [grpc.insecure_channel(s.target) for s in self.servers]
        self.main = pb_grpc.RecommenderStub(self.channels[0])
        self.shadow = {t: pb_grpc.RecommenderStub(c) for t, c in zip(TENANTS, self.channels[1:],
                                                                      strict=True)}

    def both(self, tenant: str, rpc: str, request: Any) -> tuple[Outcome, Outcome]:
        """``request`` (a message, or a list for a stream) sent to the shared server with
        ``tenant``'s key and to ``tenant``'s shadow."""
        def send(stub: pb_grpc.RecommenderStub, metadata: tuple[tuple[str, str], ...]
                 ) -> Outcome:
            message = iter(request) if isinstance(request, list) else request
            return call(getattr(stub, rpc), message, metadata)
        return send(self.main, self.metadata[tenant]), send(self.shadow[tenant], ())

    def reset(self) -> None:
        """Every item and user of both tenants deleted, on every server."""
        for tenant in TENANTS:
            for stub, metadata in ((self.main, self.metadata[tenant]),
                                   (self.shadow[tenant], ())):
                stub.DeleteItems(pb.DeleteItemsRequest(ids=list(ALL_IDS), tenant=tenant),
                                 metadata=metadata, timeout=TIMEOUT)
                for user in USERS:
                    stub.DeleteUser(pb.DeleteUserRequest(user_id=user, tenant=tenant),
                                    metadata=metadata, timeout=TIMEOUT)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for server in self.servers:
            server.stop()
        for engine in (self.main_engine, *self.engines.values()):
            engine.close()


# -- comparing answers --------------------------------------------------------------------

def close_enough(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6)


def explanation_view(e: pb.Explanation) -> dict[str, Any]:
    """An explanation without its rank fields (ties may order differently, see
    :func:`assert_same_ranking`); scores rounded to what float32 carries."""
    return {"fused_score": round(e.fused_score, 5),
            "channels": {name: round(c.score, 5) for name, c in sorted(e.channels.items())},
            "matched_terms": sorted(e.matched_terms), "because_of": list(e.because_of),
            "because_of_titles": list(e.because_of_titles),
            "shared_attributes": sorted(e.shared_attributes), "reason": e.reason}


def assert_same_ranking(main: Any, shadow: Any, top_k: int, what: str) -> None:
    """Two Search or Recommend replies agree: the same scores in order, the same items at
    each score (a run of equal scores may be ordered either way, and the last such run may
    be cut differently by ``top_k``), the same items and explanations."""
    for name in ("channels", "fusion", "reranked"):
        assert getattr(main, name) == getattr(shadow, name), (what, name)
    if isinstance(main, pb.RecommendResponse):
        assert (main.cold_start, main.strategy) == (shadow.cold_start, shadow.strategy), what
    ours, theirs = list(main.results), list(shadow.results)
    assert len(ours) == len(theirs), (what, [r.id for r in ours], [r.id for r in theirs])
    assert all(close_enough(x.score, y.score) for x, y in zip(ours, theirs, strict=True)), (
        what, [(r.id, r.score) for r in ours], [(r.id, r.score) for r in theirs])
    start = 0
    while start < len(ours):
        end = start + 1
        while end < len(ours) and close_enough(ours[end].score, ours[start].score):
            end += 1
        if end < len(ours) or len(ours) < top_k:  # a run that top_k did not cut
            assert {r.id for r in ours[start:end]} == {r.id for r in theirs[start:end]}, (
                what, [(r.id, r.score) for r in ours], [(r.id, r.score) for r in theirs])
        start = end
    by_id = {r.id: r for r in theirs}
    for result in ours:
        if result.id in by_id:
            twin = by_id[result.id]
            assert result.item == twin.item, (what, result.id)
            assert explanation_view(result.explanation) == explanation_view(
                twin.explanation), (what, result.id)


def assert_same(main: Outcome, shadow: Outcome, what: str, top_k: int = 0) -> None:
    """The shared server answered as the shadow did."""
    assert (main.code, main.details) == (shadow.code, shadow.details), (what, main, shadow)
    if main.code != grpc.StatusCode.OK:
        return
    if isinstance(main.reply, pb.SearchResponse | pb.RecommendResponse):
        assert_same_ranking(main.reply, shadow.reply, top_k, what)
    else:
        assert isinstance(main.reply, Message)
        assert without_timings(main.reply) == without_timings(shadow.reply), (
            what, main.reply, shadow.reply)


def without_timings(message: Message) -> Message:
    """A copy of ``message`` without its per-stage timings (each server measures its own)."""
    copy = type(message)()
    copy.CopyFrom(message)
    if "stage_ms" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("stage_ms")
    return copy


# -- strategies ---------------------------------------------------------------------------

tenants = st.sampled_from(TENANTS)
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)
any_ids = st.lists(st.sampled_from(ALL_IDS), max_size=4, unique=True)


def items_of(tenant: str) -> st.SearchStrategy[list[pb.Item]]:
    """One to four items of ``tenant`` with ids from its pool and random content."""
    one = st.builds(
        lambda item_id, title, text, genre, year: pb.Item(
            id=item_id, tenant=tenant, title=f"{title} {item_id}", text=text,
            attributes={"genre": genre, "year": year}),
        st.sampled_from(POOL[tenant]), words, words, st.sampled_from(["rock", "jazz", "folk"]),
        st.integers(1990, 2000))
    return st.lists(one, min_size=1, max_size=4)


class TenantIsolation(RuleBasedStateMachine):
    """Random requests of two tenants; every answer must be the tenant's shadow's."""

    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        self.world.reset()
        self.clock = 1_750_000_000.0
        self.live: dict[str, set[str]] = {t: set() for t in TENANTS}
        """Item ids each tenant has stored, by the replies seen."""

    @rule(data=st.data(), tenant=tenants)
    def upsert(self, data: st.DataObject, tenant: str) -> None:
        items = data.draw(items_of(tenant))
        main, shadow = self.world.both(tenant, "UpsertItems",
                                       [pb.UpsertItemsRequest(item=i) for i in items])
        assert_same(main, shadow, "UpsertItems")
        assert main.reply.upserted == len({i.id for i in items}) and not main.reply.rejected
        self.live[tenant] |= {i.id for i in items}

    @rule(tenant=tenants, events=st.lists(st.tuples(
        st.sampled_from(USERS), st.sampled_from(ALL_IDS), st.sampled_from(KINDS),
        st.integers(1, 5)), min_size=1, max_size=6))
    def record_events(self, tenant: str, events: list[tuple[str, str, str, int]]) -> None:
        messages = []
        for user, item, kind, value in events:
            self.clock += 60.0
            messages.append(pb.Event(user_id=user, item_id=item, kind=kind, tenant=tenant,
                                     value=float(value) if kind == "rating" else 0.0,
                                     timestamp=self.clock))
        main, shadow = self.world.both(tenant, "RecordEvents", messages)
        assert_same(main, shadow, "RecordEvents")
        recorded = sum(1 for _, item, _, _ in events if item in self.live[tenant])
        assert main.reply.recorded == recorded, (main.reply, self.live[tenant])

    @rule(tenant=tenants, text=words, explain=st.booleans(),
          fusion=st.sampled_from([pb.FUSION_UNSPECIFIED, pb.FUSION_DBSF]),
          top_k=st.integers(1, 8), genre=st.sampled_from(["", "rock", "jazz"]))
    def search(self, tenant: str, text: str, explain: bool, fusion: int, top_k: int,
               genre: str) -> None:
        request = pb.SearchRequest(text=text, tenant=tenant, explain=explain, top_k=top_k,
                                   hybrid=pb.HybridParams(fusion=fusion))  # type: ignore[arg-type]
        if genre:
            request.filter.must.add(key="genre").equals.string_value = genre
        main, shadow = self.world.both(tenant, "Search", request)
        assert_same(main, shadow, f"Search {request}", top_k)
        self._own(tenant, main)

    @rule(tenant=tenants, user=st.sampled_from(("", *USERS)), positives=any_ids,
          negatives=any_ids, context=st.sampled_from(["", "red apple", "quiet jazz lamp"]),
          explain=st.booleans(), include_seen=st.booleans(), top_k=st.integers(1, 8),
          strategy=st.sampled_from([pb.RECOMMEND_STRATEGY_UNSPECIFIED,
                                    pb.RECOMMEND_STRATEGY_AVERAGE_VECTOR,
                                    pb.RECOMMEND_STRATEGY_BEST_SCORE]))
    def recommend(self, tenant: str, user: str, positives: list[str], negatives: list[str],
                  context: str, explain: bool, include_seen: bool, top_k: int,
                  strategy: int) -> None:
        request = pb.RecommendRequest(
            user_id=user, tenant=tenant, positive_ids=positives, negative_ids=negatives,
            context=context, explain=explain, include_seen=include_seen, top_k=top_k,
            strategy=strategy)  # type: ignore[arg-type]
        main, shadow = self.world.both(tenant, "Recommend", request)
        assert_same(main, shadow, f"Recommend {request}", top_k)
        self._own(tenant, main)

    @rule(tenant=tenants, ids=st.lists(st.sampled_from(ALL_IDS), min_size=1, max_size=4))
    def get_items(self, tenant: str, ids: list[str]) -> None:
        main, shadow = self.world.both(tenant, "GetItems",
                                       pb.GetItemsRequest(ids=ids, tenant=tenant))
        assert_same(main, shadow, "GetItems")
        expected = grpc.StatusCode.OK if set(ids) <= self.live[tenant] else (
            grpc.StatusCode.NOT_FOUND)
        assert main.code == expected, (main, self.live[tenant])
        self._own(tenant, main)

    @rule(tenant=tenants, ids=st.lists(st.sampled_from(ALL_IDS), min_size=1, max_size=3))
    def delete_items(self, tenant: str, ids: list[str]) -> None:
        main, shadow = self.world.both(tenant, "DeleteItems",
                                       pb.DeleteItemsRequest(ids=ids, tenant=tenant))
        assert_same(main, shadow, "DeleteItems")
        assert main.reply.deleted == len(set(ids) & self.live[tenant])
        self.live[tenant] -= set(ids)

    @rule(tenant=tenants, user=st.sampled_from(USERS))
    def delete_user(self, tenant: str, user: str) -> None:
        main, shadow = self.world.both(tenant, "DeleteUser",
                                       pb.DeleteUserRequest(user_id=user, tenant=tenant))
        assert_same(main, shadow, "DeleteUser")

    @rule(tenant=tenants)
    def get_info(self, tenant: str) -> None:
        main, shadow = self.world.both(tenant, "GetInfo", pb.GetInfoRequest())
        assert main.code == shadow.code == grpc.StatusCode.OK, (main, shadow)
        assert main.reply.item_count == shadow.reply.item_count == len(self.live[tenant])

    @rule(tenant=tenants, item_id=st.sampled_from(ALL_IDS), user=st.sampled_from(USERS))
    def reach_into_the_other_tenant(self, tenant: str, item_id: str, user: str) -> None:
        """The key of ``tenant`` naming the other tenant (or the default one): refused, or
        rejected by index in a stream; the shadows never hear of it, so any effect would
        show in the other tenant's next comparison."""
        stub, metadata, target = self.world.main, self.world.metadata[tenant], other(tenant)
        for named in (target, ""):
            for rpc, request in (
                    ("Search", pb.SearchRequest(text="red", tenant=named)),
                    ("Recommend", pb.RecommendRequest(positive_ids=[item_id], tenant=named)),
                    ("GetItems", pb.GetItemsRequest(ids=[item_id], tenant=named)),
                    ("DeleteItems", pb.DeleteItemsRequest(ids=[item_id], tenant=named)),
                    ("DeleteUser", pb.DeleteUserRequest(user_id=user, tenant=named))):
                outcome = call(getattr(stub, rpc), request, metadata)
                assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, (rpc, outcome)
                assert repr(item_id) not in outcome.details, (rpc, outcome)  # ids unnamed
                assert repr(user) not in outcome.details, (rpc, outcome)
        theirs = pb.Item(id=item_id, tenant=target, title="theirs red", text="theirs")
        upserted = call(stub.UpsertItems, iter([pb.UpsertItemsRequest(item=theirs)]), metadata)
        assert upserted.code == grpc.StatusCode.OK and upserted.reply.upserted == 0
        assert [r.index for r in upserted.reply.rejected] == [0]
        self.clock += 60.0
        event = pb.Event(user_id=user, item_id=item_id, kind="purchase", tenant=target,
                         timestamp=self.clock)
        recorded = call(stub.RecordEvents, iter([event]), metadata)
        assert recorded.code == grpc.StatusCode.OK and recorded.reply.recorded == 0
        assert [r.index for r in recorded.reply.rejected] == [0]

    @invariant()
    def counts_agree(self) -> None:
        """Cheap and after every step: GetInfo of each key counts its tenant's items only."""
        for tenant in TENANTS:
            info = self.world.main.GetInfo(pb.GetInfoRequest(), metadata=self.world.metadata[
                tenant], timeout=TIMEOUT)
            assert info.item_count == len(self.live[tenant]), (tenant, self.live)

    def _own(self, tenant: str, outcome: Outcome) -> None:
        """Every item in a reply is the caller's tenant's and stored."""
        if outcome.code != grpc.StatusCode.OK:
            return
        reply = outcome.reply
        items = (list(reply.items) if isinstance(reply, pb.GetItemsResponse)
                 else [r.item for r in reply.results])
        for item in items:
            assert item.tenant == tenant and item.id in self.live[tenant], (tenant, item)
        if isinstance(reply, pb.GetItemsResponse):
            return
        for result in reply.results:
            assert set(result.explanation.because_of) <= set(POOL[tenant]), result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_text_dir: Path) -> Iterator[World]:
    """The shared server and the two shadows, on tiny models (loaded once, shared)."""
    built = World(tmp_path_factory.mktemp("isolation"), tiny_text_dir)
    yield built
    built.close()


def test_no_tenant_sees_or_moves_the_other(world: World) -> None:
    TenantIsolation.world = world
    run_state_machine_as_test(TenantIsolation, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True,
        database=None, suppress_health_check=list(HealthCheck), print_blob=False))


def test_config_of_the_world_is_what_the_test_says(world: World) -> None:
    """Guards the premise: auth is on for the shared server only, and the shadows share
    the shared server's models (so their encoders agree to the bit)."""
    assert world.main_engine.config.auth_enabled()
    for engine in world.engines.values():
        assert not engine.config.auth_enabled()
        assert engine.models is world.main_engine.models


def test_a_behaviour_model_serves_only_its_tenant(world: World, tmp_path: Path,
                                                  tiny_text_dir: Path) -> None:
    """Tenant b's recommendations are the same whether or not a co-occurrence model trained
    on tenant a's log is loaded: b's items get no vector from it (re-indexing copies the
    model's vectors by id), b's queries are not encoded with it and b's explanations do not
    use it. Both tenants have an item ``s0``, as tenants' ids may collide."""
    clip = make_tiny_clip_settings()
    trained, plain = (Engine(make_config(tmp_path / name, tiny_text_dir, clip),
                             world.main_engine.models) for name in ("trained", "plain"))
    try:
        model = CooccurrenceModel.fit([["s0", "a0", "s1"], ["a0", "a1"], ["s1", "s2", "a2"],
                                       ["s0", "s2"], ["a1", "s2", "a0"]], dim=256)
        trained.use_behaviour(COOCCURRENCE, model, "a")
        items = [ItemInput(ItemRecord(id=i, tenant="b", title=f"{word} {i}"))
                 for i, word in (("s0", "red lamp"), ("s1", "blue vase"), ("s2", "jazz"),
                                 ("b0", "storm"))]
        answers = []
        for engine in (trained, plain):
            engine.upsert(items)
            result = engine.recommend(RecommendRequest(tenant="b", positive_ids=("s0",),
                                                       explain=True, top_k=3))
            answers.append((result.channels, [(h.record.id, round(h.score, 5))
                                              for h in result.hits]))
        assert answers[0] == answers[1]
    finally:
        trained.close()
        plain.close()
