"""``store.quantization``: a real EdgeStore created quantized, searched with rescoring.

A few hundred clustered 64-d unit vectors, an HNSW build by the store's own
copy-and-swap ``optimize``, and exact nearest neighbours from numpy to compare with.
Quantized scores differ from float32 cosine by ~1e-3 (int8), so "rescored" is seen in
the scores: with rescoring they are the exact cosines, without it they are not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from engine.config import EngineConfig
from engine.domain import ChannelQuery, HybridQuery, InvalidInput, ItemRecord, StoredItem
from engine.store import EdgeStore, Quantization, ServerStore, VectorSchema, quantization
from engine.store.hybrid import plan_hybrid
from engine.store.server.client import hybrid_requests, quantization_config

DIM, POINTS, TENANT = 64, 400, "shop"
SCHEMA = VectorSchema({"fused": DIM})

pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]


def _vectors(count: int, seed: int) -> np.ndarray:
    """Unit vectors around 8 cluster centres (a Gaussian mixture), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, DIM))
    points = centres[rng.integers(0, 8, count)] + 0.6 * rng.standard_normal((count, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


ITEMS = _vectors(POINTS, seed=0)
QUERIES = _vectors(20, seed=1)


def _fill(store: EdgeStore | ServerStore) -> None:
    """Upsert the items (ids ``i0``...) into a store."""
    store.upsert([StoredItem(ItemRecord(id=f"i{n}", tenant=TENANT), {"fused": vector})
                  for n, vector in enumerate(ITEMS)])


def _search(store: EdgeStore | ServerStore, query: np.ndarray) -> tuple[list[int], list[float]]:
    """Top 10 item numbers and scores of a plain nearest search on ``fused``."""
    hits = store.hybrid_search(HybridQuery([ChannelQuery("fused", query, 10)], 10, TENANT))
    return [int(h.record.id[1:]) for h in hits], [h.score for h in hits]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir indexed int8-quantized, HNSW built (closed again: tests reopen it)."""
    root = tmp_path_factory.mktemp("quantized") / "data"
    store = EdgeStore(root, SCHEMA, indexing_threshold_kb=1, quantization=Quantization("int8"))
    try:
        _fill(store)
        store.optimize(wait=True)
        assert store.info()["indexed_vectors"] == POINTS
    finally:
        store.close()
    return root


@pytest.fixture
def reopened(data_dir: Path, request: pytest.FixtureRequest) -> Iterator[EdgeStore]:
    """The quantized data dir opened with the quantization given as the test's param."""
    store = EdgeStore(data_dir, SCHEMA, quantization=request.param)
    yield store
    store.close()


def test_shard_is_created_quantized(data_dir: Path) -> None:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["quantization"] == "int8"
    shard = data_dir / manifest["current"]
    quantized = list(shard.rglob("quantized.data"))  # qdrant's int8 copy of the vectors
    assert quantized and sum(p.stat().st_size for p in quantized) >= POINTS * DIM


@pytest.mark.parametrize("reopened", [Quantization("int8", 2.0, rescore=True)], indirect=True)
def test_rescored_search_returns_exact_neighbours(reopened: EdgeStore) -> None:
    for query in QUERIES:
        exact = ITEMS @ query
        found, scores = _search(reopened, query)
        assert found == list(np.argsort(-exact, kind="stable")[:10])
        np.testing.assert_allclose(scores, exact[found], atol=1e-5)


@pytest.mark.parametrize("reopened", [Quantization("int8", rescore=False)], indirect=True)
def test_without_rescoring_scores_are_the_quantized_ones(reopened: EdgeStore) -> None:
    errors = []
    for query in QUERIES:
        found, scores = _search(reopened, query)
        errors.append(np.abs(np.asarray(scores) - ITEMS[found] @ query).max())
    assert max(errors) > 1e-4  # int8 scores: the quantized vectors were searched


@pytest.mark.parametrize("reopened", [Quantization("none")], indirect=True)
def test_an_existing_shard_keeps_its_quantization(reopened: EdgeStore) -> None:
    assert reopened.quantization.kind == "int8"  # recorded at creation; still rescored
    found, scores = _search(reopened, QUERIES[0])
    np.testing.assert_allclose(scores, ITEMS[found] @ QUERIES[0], atol=1e-5)


def test_reopening_with_another_kind_is_logged(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.store.edge.shard"):
        EdgeStore(data_dir, SCHEMA, quantization=Quantization("binary")).close()
    assert "indexed with quantization 'int8', not the configured 'binary'" in caplog.text


def test_binary_shard_builds_and_finds_the_query_item(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "data", SCHEMA, indexing_threshold_kb=1,
                      quantization=Quantization("binary", oversampling=4.0))
    try:
        _fill(store)
        store.optimize(wait=True)
        assert list(store.shard_path.rglob("quantized.data"))
        found, scores = _search(store, ITEMS[7])
        assert found[0] == 7 and scores[0] == pytest.approx(1.0, abs=1e-5)  # rescored
    finally:
        store.close()


def test_server_store_asks_for_a_quantized_collection_and_rescoring() -> None:
    """qdrant-client's local mode keeps no quantization config, so the collection's config
    and the search params are checked as the store spells them, and the search on it."""
    assert isinstance(quantization_config(Quantization("int8")), models.ScalarQuantization)
    assert isinstance(quantization_config(Quantization("binary")), models.BinaryQuantization)
    assert quantization_config(Quantization("none")) is None
    plan = plan_hybrid(SCHEMA, HybridQuery([ChannelQuery("fused", QUERIES[0], 10)], 10, TENANT))
    assert plan is not None
    (request,) = hybrid_requests(plan, 64, Quantization("int8", 3.0, rescore=True))
    assert request.params == models.SearchParams(hnsw_ef=64, quantization=models.
                                                 QuantizationSearchParams(rescore=True,
                                                                          oversampling=3.0))
    client = QdrantClient(":memory:")
    store = ServerStore(client, SCHEMA, collection="q", quantization=Quantization("int8"))
    try:
        _fill(store)
        vectors = client.get_collection("q").config.params.vectors
        assert isinstance(vectors, dict) and vectors["fused"].on_disk is True
        found, _ = _search(store, QUERIES[0])
        assert found == list(np.argsort(-(ITEMS @ QUERIES[0]), kind="stable")[:10])
    finally:
        store.close()
        client.close()


def test_config_setting() -> None:
    settings = EngineConfig.load(store={"quantization": "int8",
                                        "quantization_oversampling": 3.0}).store
    assert quantization(settings) == Quantization("int8", 3.0, True)
    assert quantization(EngineConfig.load().store) == Quantization("none")
    with pytest.raises(ValueError, match="quantization"):
        EngineConfig.load(store={"quantization": "int4"})
    with pytest.raises(InvalidInput, match="oversampling"):
        Quantization("int8", oversampling=0.5)
