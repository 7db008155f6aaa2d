"""Recommendations through the engine: profile and recommend strategies, seen items, cold
start, the behaviour channel, MMR and explanations, on tiny random models and real stores.

Expected rankings are computed here from the stored vectors (numpy), so each test
checks the engine against the formula, not against its own output.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialSettings, train_sequential
from engine.config import EngineConfig
from engine.domain import (
    BEHAVIOUR,
    COOCCURRENCE,
    ChannelHit,
    ChannelQuery,
    Event,
    HybridQuery,
    InvalidInput,
    ItemFilter,
    ItemInput,
    ItemRecord,
    RecommendRequest,
)
from engine.recommend.diversity import mmr_order
from engine.runtime.engine import Engine
from tests.conftest import make_config

TENANT = "default"
TITLES = ["red apple", "green pear", "mountain bike", "road bike", "blue vase", "clay pot",
          "jazz record", "rock record", "tennis racket", "running shoes"]
IDS = [f"m{k}" for k in range(len(TITLES))]
CONTENT_ONLY = {"behaviour": 0.0, "fused": 1.0}


@pytest.fixture
def config(tmp_path: Path, tiny_text_dir: Path) -> EngineConfig:
    cfg = make_config(tmp_path / "store", tiny_text_dir)
    cfg.clip.enabled = False
    cfg.behaviour.dim = 8
    cfg.behaviour.cooccurrence_dim = 16
    return cfg


@pytest.fixture
def engine(config: EngineConfig) -> Iterator[Engine]:
    eng = Engine.from_config(config, load_reranker=False)
    eng.upsert([ItemInput(ItemRecord(id=i, title=t, attributes={"n": k}))
                for k, (i, t) in enumerate(zip(IDS, TITLES, strict=True))])
    yield eng
    eng.close()


def events(user: str, *items: str, kind: str = "view", start: float = 1.0) -> list[Event]:
    return [Event(user, item, kind, 0.0, start + k) for k, item in enumerate(items)]


def nearest(engine: Engine, query: np.ndarray, exclude: set[str]) -> list[str]:
    """The unseen items by cosine to ``query`` on the fused vector, computed here."""
    vectors = engine.store.vectors(IDS, tenant=TENANT, using="fused")
    scores = {i: float(v @ query / np.linalg.norm(query)) for i, v in vectors.items()
              if i not in exclude}
    return sorted(scores, key=lambda i: -scores[i])


def ask(engine: Engine, **kwargs: object) -> list[str]:
    request = RecommendRequest(tenant=TENANT, top_k=kwargs.pop("top_k", 5),  # type: ignore[arg-type]
                               weights=kwargs.pop("weights", CONTENT_ONLY), **kwargs)  # type: ignore[arg-type]
    return [h.record.id for h in engine.recommend(request).hits]


def test_profile_strategy_ranks_by_the_profile_vector_and_skips_seen(engine: Engine) -> None:
    engine.record_events(events("u", "m0", "m2", "m6"))
    profile = engine.profiles.get("u", tenant=TENANT)
    assert profile is not None and profile.vector is not None
    got = ask(engine, user_id="u", top_k=4)
    assert got == nearest(engine, profile.vector, {"m0", "m2", "m6"})[:4]
    with_seen = ask(engine, user_id="u", top_k=10, include_seen=True)
    assert set(with_seen) == set(IDS)


def test_a_new_event_changes_the_next_recommendation(engine: Engine) -> None:
    engine.record_events(events("u", "m0", "m1"))
    before = ask(engine, user_id="u")
    engine.record_events(events("u", "m9", kind="purchase", start=10))
    after = ask(engine, user_id="u")
    profile = engine.profiles.get("u", tenant=TENANT)
    assert profile is not None
    assert after == nearest(engine, profile.vector, {"m0", "m1", "m9"})[:5]
    assert "m9" in before and "m9" not in after


def test_average_vector_strategy_matches_qdrant_formula(engine: Engine) -> None:
    engine.record_events(events("u", "m0", "m2") + events("u", "m4", kind="dislike", start=5))
    vectors = engine.store.vectors(IDS, tenant=TENANT, using="fused")
    mean = (vectors["m0"] + vectors["m2"]) / 2
    query = mean + (mean - vectors["m4"])
    got = ask(engine, user_id="u", strategy="average_vector", top_k=3)
    assert got == nearest(engine, query, {"m0", "m2", "m4"})[:3]


@pytest.mark.parametrize("strategy", ["best_score", "sum_scores"])
def test_recommend_strategies_use_positives_and_negatives(engine: Engine, strategy: str) -> None:
    got = ask(engine, positive_ids=("m2",), negative_ids=("m3",), strategy=strategy, top_k=3)
    assert "m2" not in got and "m3" not in got and len(got) == 3
    if strategy == "sum_scores":  # Qdrant: sum of positive similarities minus negative ones
        vectors = engine.store.vectors(IDS, tenant=TENANT, using="fused")
        score = {i: float(v @ vectors["m2"] - v @ vectors["m3"]) for i, v in vectors.items()}
        expected = sorted((i for i in IDS if i not in {"m2", "m3"}), key=lambda i: -score[i])
        assert got == expected[:3]


def test_explicit_positives_work_without_a_user(engine: Engine) -> None:
    got = ask(engine, positive_ids=("m6",), top_k=3)
    assert got == nearest(engine, engine.store.vectors(["m6"], tenant=TENANT,
                                                       using="fused")["m6"], {"m6"})[:3]


def test_cold_start_gets_popular_items_within_the_filter(engine: Engine) -> None:
    engine.record_events(events("a", "m5", "m7") + events("b", "m7", "m3", kind="purchase"))
    result = engine.recommend(RecommendRequest(tenant=TENANT, user_id="new", top_k=5))
    assert result.cold_start and result.channels == ["popularity"]
    assert [h.record.id for h in result.hits] == ["m7", "m3", "m5"]   # 5, 4, 1
    from engine.domain import ItemFilter, Range

    narrow = ItemFilter(must=(Range("n", gte=4),))
    hits = engine.recommend(RecommendRequest(tenant=TENANT, user_id="new", filter=narrow)).hits
    assert [h.record.id for h in hits] == ["m7", "m5"]


def test_cold_start_with_context_fuses_its_matches_with_their_popularity(
        engine: Engine) -> None:
    # distinct values (Qdrant orders equal ones as it likes); m0, m1, m4, m6 have none
    engine.store.add_popularity({"m2": 1.0, "m3": 6.0, "m5": 2.0, "m7": 5.0, "m8": 3.0,
                                 "m9": 4.0}, tenant=TENANT)
    request = RecommendRequest(tenant=TENANT, user_id="new", context="bike", top_k=6,
                               explain=True)
    result = engine.recommend(request)

    # the context's channels alone, through the store (contract-tested), then the fusion
    # with the popularity ranking computed here: 1 / (k - 1 + rank) per ranking
    settings, recommender = engine.config.recommend, engine.recommender
    encoded = recommender.channels.vectoriser.query("bike", None)
    weights = recommender.channels.weights(request)
    channels = [ChannelQuery(name, vector, settings.candidates, weights.get(name, 1.0))
                for name, vector in encoded.vectors.items()]
    assert result.cold_start and result.channels == [*encoded.vectors, "popularity"]
    matches = [h.record.id for h in engine.store.hybrid_search(HybridQuery(
        channels, limit=settings.candidates, tenant=TENANT, rrf_k=settings.rrf_k))]
    popularity = {h.record.id: h.score for h in engine.store.popular(
        tenant=TENANT, filter=ItemFilter(), limit=len(IDS))}
    by_popularity = sorted((i for i in matches if i in popularity),
                           key=lambda i: -popularity[i])
    k = settings.rrf_k
    score = {i: 1 / (k - 1 + rank) for rank, i in enumerate(matches, start=1)}
    for rank, i in enumerate(by_popularity, start=1):
        score[i] += 1 / (k - 1 + rank)
    expected = sorted(score, key=lambda i: (-round(score[i], 6), i))[:6]
    assert [h.record.id for h in result.hits] == expected
    assert [h.score for h in result.hits] == pytest.approx([score[i] for i in expected],
                                                           rel=1e-5)
    assert result.explanations is not None
    for explanation, hit in zip(result.explanations, result.hits, strict=True):
        item_id = hit.record.id
        standing = explanation.channels.get("popularity")
        if item_id in popularity:
            assert standing == ChannelHit(by_popularity.index(item_id) + 1, popularity[item_id])
        else:
            assert standing is None


def test_items_unknown_to_the_behaviour_model_still_come_via_content_and_popularity(
        engine: Engine) -> None:
    """The model knows m0-m5 only; m6-m9 have no behaviour vector (no interactions yet)."""
    settings = SequentialSettings(dim=8, layers=1, max_len=4, epochs=2, seed=1)
    engine.use_behaviour(BEHAVIOUR, train_sequential([IDS[:6], IDS[:6][::-1]], settings,
                                           progress=False), TENANT)
    engine.record_events(events("fan", "m7", kind="purchase") + events("fan", "m8", start=5))
    engine.record_events(events("u", "m1", "m2"))
    behaviour_only = ask(engine, user_id="u", top_k=8, weights={"behaviour": 1.0, "fused": 0.0})
    assert set(behaviour_only[:4]) == {"m0", "m3", "m4", "m5"}          # behaviour finds these
    assert behaviour_only[4:6] == ["m7", "m8"]                 # topped up: popular (4, then 1)
    result = engine.recommend(RecommendRequest(tenant=TENANT, user_id="u", top_k=8,
                                               weights={"behaviour": 1.0, "fused": 1.0}))
    assert {"m6", "m9"} <= {h.record.id for h in result.hits}           # content finds them
    assert "popularity" not in result.channels


def test_request_needs_someone_or_something(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="user_id, positive_ids or context"):
        engine.recommend(RecommendRequest(tenant=TENANT))
    with pytest.raises(InvalidInput, match="unknown strategy"):
        engine.recommend(RecommendRequest(tenant=TENANT, user_id="u", strategy="magic"))


def test_explanations_name_the_history_items_behind_each_result(engine: Engine) -> None:
    engine.record_events(events("u", "m0", "m4", "m8"))
    result = engine.recommend(RecommendRequest(tenant=TENANT, user_id="u", top_k=3,
                                               explain=True, weights=CONTENT_ONLY))
    assert result.explanations is not None
    vectors = engine.store.vectors(IDS, tenant=TENANT, using="fused")
    for hit, why in zip(result.hits, result.explanations, strict=True):
        assert set(why.because_of) <= {"m0", "m4", "m8"} and why.because_of
        assert "fused" in why.channels
        if len(why.because_of) > 1:
            decay = engine.profiles.weights.decay(0, 0)
            age = {"m8": 0, "m4": 1, "m0": 2}
            first, second = why.because_of[:2]
            influence = {h: float(vectors[h] @ vectors[hit.record.id]) * decay ** age[h]
                         for h in (first, second)}
            assert influence[first] >= influence[second]


def test_mmr_keeps_order_at_one_and_spreads_at_zero() -> None:
    vectors = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.98, 0.2]], dtype=np.float32)
    assert mmr_order(vectors, 4, 1.0) == [0, 1, 2, 3]
    assert mmr_order(vectors, 2, 0.3) == [0, 2]


def test_behaviour_channel_follows_the_latest_event(engine: Engine) -> None:
    """A model that learned 'm{k} is followed by m{k+1}' recommends the successor of the
    latest event, and the next event moves the recommendation at once."""
    chains = [IDS[s:] + IDS[:s] for s in range(len(IDS))] * 4
    settings = SequentialSettings(dim=8, layers=1, max_len=6, epochs=60, patience=60,
                                  lr=0.01, dropout=0.0, batch_size=40, seed=3)
    model = train_sequential(chains, settings, progress=False)
    assert engine.use_behaviour(BEHAVIOUR, model, TENANT) == len(IDS)
    behaviour_only = {"behaviour": 1.0, "fused": 0.0}
    engine.record_events(events("u", "m2", "m3"))
    assert ask(engine, user_id="u", top_k=1, weights=behaviour_only) == ["m4"]
    engine.record_events(events("u", "m4", start=9))
    assert ask(engine, user_id="u", top_k=1, weights=behaviour_only) == ["m5"]
    result = engine.recommend(RecommendRequest(tenant=TENANT, user_id="u", top_k=3))
    assert result.channels[:2] == ["behaviour", "fused"]


def test_cooccurrence_channel_ranks_like_recency_weighted_item_knn(engine: Engine) -> None:
    baskets = [["m0", "m1", "m2"], ["m1", "m2", "m3"], ["m2", "m4"], ["m3", "m4", "m5"],
               ["m6", "m7"], ["m7", "m8", "m9"], ["m0", "m9"]]
    model = CooccurrenceModel.fit(baskets, dim=16, decay=0.5)
    assert engine.use_behaviour(COOCCURRENCE, model, TENANT) == len(IDS)
    engine.record_events(events("u", "m7", "m2"))
    raw = model.queries([["m7", "m2"]])[0] @ model.embeddings.T
    score = {item: raw[i] for i, item in enumerate(model.item_ids) if item not in {"m7", "m2"}}
    expected = sorted(score, key=lambda i: -score[i])[:3]
    got = ask(engine, user_id="u", top_k=3,
              weights={"behaviour": 0.0, "cooccurrence": 1.0, "fused": 0.0})
    assert got == expected
    assert engine.info().channels[-1].name == "cooccurrence" and engine.info().channels[-1].enabled
    result = engine.recommend(RecommendRequest(
        tenant=TENANT, user_id="u", top_k=3, explain=True,
        weights={"behaviour": 0.0, "cooccurrence": 1.0, "fused": 0.0}))
    assert result.explanations is not None
    vector = dict(zip(model.item_ids, model.embeddings, strict=True))
    for hit, why in zip(result.hits, result.explanations, strict=True):
        share = {"m2": float(vector["m2"] @ vector[hit.record.id]),          # newest: weight 1
                 "m7": 0.5 * float(vector["m7"] @ vector[hit.record.id])}    # one older: 0.5
        assert why.because_of == sorted((h for h in share if share[h] > 0),
                                        key=lambda h: -share[h])


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
@pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning")
def test_server_store_gives_the_same_recommendations(engine: Engine) -> None:
    """The same items, events and requests on a Qdrant-server store (local mode) and on
    the embedded one give the same lists."""
    from qdrant_client import QdrantClient

    from engine.store import ServerStore, ServerUserStore

    history = events("u", "m0", "m5") + events("u", "m8", kind="dislike", start=5)
    engine.record_events(history)
    requests = [dict(user_id="u"), dict(user_id="u", strategy="best_score"),
                dict(user_id="u", strategy="sum_scores"), dict(positive_ids=("m3",))]
    edge = [ask(engine, top_k=4, **r) for r in requests]  # type: ignore[arg-type]
    client = QdrantClient(":memory:")
    items = ServerStore(client, engine.schema, collection="items")
    items.upsert(engine.encode_items([ItemInput(ItemRecord(id=i, title=t, attributes={"n": k}))
                                      for k, (i, t) in enumerate(zip(IDS, TITLES, strict=True))]))
    users = ServerUserStore(client, {"profile": engine.fuser.dim}, collection="items_users")
    edge_items = engine.store
    engine.store, engine.profiles.users = items, users
    engine.profiles._cache.clear()
    try:
        engine.record_events(history)
        server = [ask(engine, top_k=4, **r) for r in requests]  # type: ignore[arg-type]
        assert server == edge
        assert users.get("u", tenant=TENANT) is not None
    finally:
        engine.store, engine.profiles.users = edge_items, engine.users
