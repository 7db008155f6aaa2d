"""The offline first stage against the real one: same channels, same fusion, same rankings.

``OfflineFirstStage`` replicates ``Recommender.recommend`` in numpy so fusion
settings can be searched fast; these tests hold it to the engine's answers on a
real qdrant-edge store (a small catalog, so the store's search is exact), hit by
hit and score by score, for RRF and DBSF, any channel subset, the top-up with
popular items, and the grid search's own bookkeeping against ``fuse``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialSettings, train_sequential
from engine.config import EngineConfig
from engine.domain import BEHAVIOUR, COOCCURRENCE, Event, ItemInput, ItemRecord, RecommendRequest
from engine.recommend.offline import FusionSettings, OfflineFirstStage, UserLists
from engine.recommend.tuning import FusionGrid, FusionScorer, TunedFusion, paired_z, tune_fusion
from engine.runtime.engine import Engine
from tests.conftest import make_config

TENANT = "default"
WORDS = ["apple", "pear", "bike", "vase", "pot", "record", "racket", "shoes", "lamp", "chair"]
IDS = [f"m{k}" for k in range(40)]
KNOWN = IDS[:30]
"""Items the SASRec model is trained on; the other ten have no behaviour vector."""
RNG = np.random.default_rng(7)
HISTORIES = {f"u{u}": [IDS[j] for j in RNG.choice(40, size=int(RNG.integers(3, 9)),
                                                 replace=False)] for u in range(10)}
HISTORIES["again"] = ["m3", "m5", "m3", "m9", "m5"]          # repeats: profile counts each event
SETTINGS = [
    FusionSettings({"behaviour": 1.0, "cooccurrence": 2.0, "fused": 0.25}, 10, "rrf"),
    FusionSettings({"behaviour": 0.5, "cooccurrence": 1.0, "fused": 2.0}, 2, "rrf"),
    FusionSettings({"behaviour": 1.0, "cooccurrence": 0.0, "fused": 1.0}, 60, "rrf"),
    FusionSettings({"behaviour": 1.0, "cooccurrence": 1.0, "fused": 1.0}, 10, "dbsf"),
    FusionSettings({"behaviour": 0.0, "cooccurrence": 1.0, "fused": 0.0}, 10, "rrf"),
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_text_dir: Path) -> Iterator[Engine]:
    """A real engine on a 40-item store, both behaviour models served, every history recorded."""
    config: EngineConfig = make_config(tmp_path_factory.mktemp("offline") / "store",
                                       tiny_text_dir)
    config.clip.enabled = False
    config.behaviour.dim, config.behaviour.cooccurrence_dim = 8, 6
    config.recommend.candidates = 6   # short channel lists: their union and cut-offs matter
    eng = Engine.from_config(config, load_reranker=False)
    eng.upsert([ItemInput(ItemRecord(id=i, title=f"{WORDS[k % 10]} {k} {WORDS[k * 7 % 10]}"))
                for k, i in enumerate(IDS)])
    chains = [KNOWN[s:s + 6] for s in range(0, 25)] + [KNOWN[::-3], KNOWN[1::4]]
    sasrec = train_sequential(chains, SequentialSettings(dim=8, layers=1, max_len=8, epochs=3,
                                                         seed=0), progress=False)
    eng.use_behaviour(BEHAVIOUR, sasrec, TENANT)
    # a pair per item makes every item's co-occurrence column, so its embedding, unique:
    # equal cosines would come back in an order Qdrant leaves open
    pairs = [[IDS[k], IDS[(k + 1) % len(IDS)]] for k in range(len(IDS))]
    eng.use_behaviour(COOCCURRENCE, CooccurrenceModel.fit(
        [*chains, *HISTORIES.values(), *pairs], dim=6, decay=0.5), TENANT)
    eng.record_events([Event(user, item, "view", 0.0, 1.0 + k)
                       for user, items in HISTORIES.items() for k, item in enumerate(items)])
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def stage(engine: Engine) -> OfflineFirstStage:
    """The offline replica over the engine's catalog, models, content vectors and popularity."""
    content = engine.store.vectors(IDS, tenant=TENANT, using="fused")
    counts: dict[str, float] = {}
    for items in HISTORIES.values():
        for item in items:
            counts[item] = counts.get(item, 0.0) + 1.0
    return OfflineFirstStage.from_settings(
        IDS, engine.behaviour.for_tenant(TENANT), np.stack([content[i] for i in IDS]),
        engine.config.recommend, engine.config.profiles,
        popularity=np.array([counts.get(i, 0.0) for i in IDS]))


def engine_hits(engine: Engine, user: str, settings: FusionSettings, top_k: int
                ) -> tuple[list[str], list[float]]:
    """The engine's recommendation for a user under ``settings``: ids and scores."""
    result = engine.recommend(RecommendRequest(
        tenant=TENANT, user_id=user, top_k=top_k, weights=dict(settings.weights),
        fusion=settings.fusion, rrf_k=settings.rrf_k))
    return [h.record.id for h in result.hits], [h.score for h in result.hits]


@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_the_offline_ranking_is_the_engines(engine: Engine, stage: OfflineFirstStage,
                                            settings: FusionSettings) -> None:
    lists = stage.channel_lists(list(HISTORIES.values()))
    for (user, history), user_lists in zip(HISTORIES.items(), lists, strict=True):
        got, scores = engine_hits(engine, user, settings, top_k=5)
        items, fused = stage.fused_scores(user_lists, settings)
        score_of = {stage.item_ids[i]: float(s) for i, s in zip(items, fused, strict=True)}
        assert not set(got) & set(history)
        # the engine's scores are ours, position by position, and each item it lists
        # holds our score of that position: the same ranking up to Qdrant's unordered ties.
        # Qdrant fuses in float32 and DBSF divides by a channel's spread, which turns float32
        # rounding into relative errors of ~1e-5 (seen: 1.25e-5), so the bound is 1e-4
        assert scores == pytest.approx(fused[:len(got)].tolist(), rel=1e-4, abs=1e-5)
        assert [score_of[i] for i in got] == pytest.approx(scores, rel=1e-4, abs=1e-5)
        assert len(got) == len(stage.fuse(user_lists, settings, 5))


def test_channel_lists_are_the_stores_channels(engine: Engine, stage: OfflineFirstStage) -> None:
    user, history = "u1", HISTORIES["u1"]
    [lists] = stage.channel_lists([history])
    assert set(lists.channels) == {"behaviour", "cooccurrence", "fused"}
    for name, channel in lists.channels.items():
        alone = FusionSettings({c: float(c == name) for c in stage.channels})
        got, scores = engine_hits(engine, user, alone, top_k=len(channel.items))
        assert got == [stage.item_ids[i] for i in channel.items]
        assert scores == pytest.approx(channel.scores.tolist(), abs=1e-5)
    behaviour = lists.channels["behaviour"].items
    assert all(stage.item_ids[i] in KNOWN for i in behaviour)      # only items with the vector


def test_a_short_list_is_topped_up_with_popular_items(engine: Engine,
                                                      stage: OfflineFirstStage) -> None:
    settings = FusionSettings({"behaviour": 1.0, "cooccurrence": 0.0, "fused": 0.0})
    [lists] = stage.channel_lists([HISTORIES["u2"]], limit=30)
    ranked = stage.fuse(lists, settings, 30)
    got, _ = engine_hits(engine, "u2", settings, top_k=30)
    assert len(ranked) > len(lists.channels["behaviour"].items)      # the fill did happen
    assert got == [stage.item_ids[i] for i in ranked]


def test_candidates_for_excludes_what_it_is_told(stage: OfflineFirstStage) -> None:
    settings = SETTINGS[0]
    [plain] = stage.candidates_for([HISTORIES["u3"]], settings, 5)
    [fewer] = stage.candidates_for([HISTORIES["u3"]], settings, 5, exclude=[{plain[0]}])
    assert len(plain) == len(fewer) == 5 and plain[0] not in fewer
    assert not set(plain) & set(HISTORIES["u3"])


def test_the_scorer_ranks_targets_as_fuse_does(stage: OfflineFirstStage) -> None:
    histories = [h[:-1] for h in HISTORIES.values()]
    targets = [stage.index[h[-1]] for h in HISTORIES.values()]
    lists = stage.channel_lists(histories)
    scorer = FusionScorer(stage.channels, lists, targets)
    for settings in FusionGrid(weights=(0.0, 0.5, 2.0), rrf_k=(2, 10)).settings(stage.channels):
        expected = [rank_in(stage, user, settings, t) for user, t in
                    zip(lists, targets, strict=True)]
        assert scorer.ranks(settings).tolist() == expected, settings


def rank_in(stage: OfflineFirstStage, lists: UserLists, settings: FusionSettings,
            target: int) -> float:
    """1-based position of ``target`` in the fused list (``inf``: absent)."""
    items, _ = stage.fused_scores(lists, settings)
    where = np.flatnonzero(items == target)
    return float(where[0] + 1) if len(where) else float("inf")


def test_tuning_picks_the_best_setting_and_saves_it(stage: OfflineFirstStage,
                                                    tmp_path: Path) -> None:
    histories = [h[:-1] for h in HISTORIES.values()] + [["m1"]]
    targets = [h[-1] for h in HISTORIES.values()] + ["not-in-the-catalog"]
    defaults = FusionSettings({"behaviour": 1.0, "cooccurrence": 2.0, "fused": 0.25})
    grid = FusionGrid(weights=(0.0, 1.0, 2.0), rrf_k=(10, 60))
    tuned = tune_fusion(stage, histories, targets, defaults, grid=grid, min_z=0.0)
    scorer = FusionScorer(stage.channels, stage.channel_lists(histories[:-1]),
                          [stage.index[t] for t in targets[:-1]])
    every = [scorer.ndcg(s) for s in grid.settings(stage.channels)]
    assert max(every) > scorer.ndcg(defaults)                  # so there is something to pick
    assert tuned.settings == tuned.best and tuned.z > 0
    assert tuned.best_ndcg == tuned.valid_ndcg == pytest.approx(max(every), abs=1e-6)
    assert tuned.valid_ndcg == pytest.approx(scorer.ndcg(tuned.settings), abs=1e-6)
    assert tuned.defaults_ndcg == pytest.approx(scorer.ndcg(defaults), abs=1e-6)
    assert tuned.users == len(histories) - 1 and tuned.notes["unscorable"] == 1
    assert tuned.grid_size == len(grid.settings(stage.channels))
    assert set(tuned.alone) == set(stage.channels)
    tuned.save(tmp_path / "fusion.json")
    assert TunedFusion.load(tmp_path / "fusion.json") == tuned


def test_a_lead_within_the_noise_keeps_the_defaults(stage: OfflineFirstStage) -> None:
    histories = [h[:-1] for h in HISTORIES.values()]
    targets = [h[-1] for h in HISTORIES.values()]
    defaults = FusionSettings({"behaviour": 1.0, "cooccurrence": 2.0, "fused": 0.25})
    grid = FusionGrid(weights=(0.0, 1.0, 2.0), rrf_k=(10, 60))
    picked = tune_fusion(stage, histories, targets, defaults, grid=grid, min_z=0.0)
    strict = tune_fusion(stage, histories, targets, defaults, grid=grid, min_z=picked.z + 0.1)
    assert picked.settings == picked.best != strict.settings == strict.defaults
    assert strict.best == picked.best and strict.valid_ndcg == strict.defaults_ndcg
    assert strict.kept_defaults and "the defaults: the best" in strict.summary()


def test_paired_z_is_the_mean_gain_in_standard_errors() -> None:
    base = np.array([0.0, 0.5, 0.2, 0.1])
    gain = np.array([0.1, 0.3, -0.1, 0.1])
    expected = gain.mean() / (gain.std(ddof=1) / 2.0)
    assert paired_z(base + gain, base) == pytest.approx(expected)
    exact = np.array([0.0, 0.5, 0.25, 0.125])                 # + 0.5 is exact in binary
    assert paired_z(base, base) == 0.0 and paired_z(exact + 0.5, exact) == np.inf
