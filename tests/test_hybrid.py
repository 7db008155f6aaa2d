"""Fusion math and the lexical channel, on both store backends.

The fused scores are checked against formulas computed here by hand, not
against what Qdrant returns, so a change of Qdrant's definitions shows up:

* RRF (1-based ``rank``): ``sum over channels of 1 / (k - 1 + rank / weight)``,
  i.e. ``1 / (k + position)`` with a 0-based position when the weight is 1.
* DBSF: per channel ``(s - (mean - 3 std)) / (6 std)`` with the sample standard
  deviation (n - 1) of that channel's hits, 0.5 for a channel with one hit; summed.

The lexical tests run real BM25 (qdrant-edge's model) through both stores.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from engine.domain import (
    ChannelQuery,
    HybridQuery,
    InvalidInput,
    ItemRecord,
    SparseVector,
    StoredItem,
)
from engine.encoders import LexicalEncoder, LexicalSettings
from engine.store import EdgeStore, ServerStore, VectorSchema, VectorStore

pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
    pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning"),
]

TENANT = "shop"
SCHEMA = VectorSchema({"a": 2, "b": 2}, sparse=("lexical",))


def at(degrees: float) -> np.ndarray:
    """A 2-d unit vector; its cosine to ``at(0)`` is cos(degrees)."""
    return np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))], np.float32)


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    """An empty store on each backend (the server one on ``QdrantClient(":memory:")``)."""
    if request.param == "edge":
        with EdgeStore(tmp_path / "data", SCHEMA) as edge:
            yield edge
        return
    client = QdrantClient(":memory:")
    with ServerStore(client, SCHEMA, collection="hybrid") as server:
        yield server
    client.close()


# -- fusion math ------------------------------------------------------------------------------

A_ANGLES = {"p0": 2, "p1": 12, "p2": 20, "p3": 33, "p4": 41, "p5": 57}
"""Channel ``a`` ranks p0..p5."""
B_ANGLES = {"p0": 70, "p1": 50, "p2": 5, "p3": 28, "p4": 16, "p5": 80}
"""Channel ``b`` ranks p2, p4, p3, p1, p0, p5."""


@pytest.fixture
def ranked(store: VectorStore) -> VectorStore:
    """Six items whose rankings on ``a`` and ``b`` (query ``at(0)``) are known."""
    store.upsert([
        StoredItem(ItemRecord(id=key, tenant=TENANT), {"a": at(A_ANGLES[key]), "b": at(angle)})
        for key, angle in B_ANGLES.items()
    ])
    return store


def ranking(angles: Mapping[str, float], limit: int) -> list[tuple[str, float]]:
    """A channel's own top ``limit`` (id, cosine) for the query ``at(0)``, best first."""
    scored = sorted(((key, math.cos(math.radians(a))) for key, a in angles.items()),
                    key=lambda pair: -pair[1])
    return scored[:limit]


def fuse(query: HybridQuery, store: VectorStore) -> dict[str, float]:
    """The store's fused scores by item id."""
    return {hit.record.id: hit.score for hit in store.hybrid_search(query)}


@pytest.mark.parametrize(
    ("k", "weights"), [(60, (1.0, 1.0)), (1, (1.0, 1.0)), (2, (3.0, 1.0)), (10, (0.5, 2.0))]
)
def test_rrf_is_the_sum_of_one_over_k_minus_one_plus_rank_over_weight(
    ranked: VectorStore, k: int, weights: tuple[float, float]
) -> None:
    limits = (6, 3)  # b brings only p2, p4, p3: the others are scored by a alone
    query = HybridQuery(
        [ChannelQuery("a", at(0), limits[0], weights[0]),
         ChannelQuery("b", at(0), limits[1], weights[1])],
        limit=6, tenant=TENANT, rrf_k=k,
    )
    expected: dict[str, float] = {}
    for angles, limit, weight in zip((A_ANGLES, B_ANGLES), limits, weights, strict=True):
        for rank, (key, _) in enumerate(ranking(angles, limit), start=1):
            expected[key] = expected.get(key, 0.0) + 1 / (k - 1 + rank / weight)

    got = fuse(query, ranked)
    assert got == pytest.approx(expected, rel=1e-5)
    order = [hit.record.id for hit in ranked.hybrid_search(query)]
    assert order == sorted(expected, key=lambda key: -expected[key])


def test_rrf_ranks_start_at_one_so_the_top_scores_one_over_k(ranked: VectorStore) -> None:
    query = HybridQuery([ChannelQuery("a", at(0), 6), ChannelQuery("b", at(0), 1)],
                        limit=6, tenant=TENANT, rrf_k=60, with_channel_hits=True)
    hits = ranked.hybrid_search(query)
    p0 = next(hit for hit in hits if hit.record.id == "p0")  # first on a, absent from b

    assert p0.channels["a"].rank == 1 and "b" not in p0.channels
    assert p0.score == pytest.approx(1 / 60, rel=1e-6)  # not 1 / 61
    p2 = next(hit for hit in hits if hit.record.id == "p2")  # third on a, first on b
    assert p2.score == pytest.approx(1 / 62 + 1 / 60, rel=1e-6)


def dbsf(rankings: list[list[tuple[str, float]]]) -> dict[str, float]:
    """DBSF by hand: mean +- 3 sample std to [0, 1] per channel (0.5 if one hit), summed."""
    fused: dict[str, float] = {}
    for hits in rankings:
        scores = [score for _, score in hits]
        if len(scores) == 1:
            normalised = [0.5]
        else:
            mean, std = statistics.mean(scores), statistics.stdev(scores)
            low, high = mean - 3 * std, mean + 3 * std
            normalised = [(s - low) / (high - low) for s in scores]
        for (key, _), value in zip(hits, normalised, strict=True):
            fused[key] = fused.get(key, 0.0) + value
    return fused


@pytest.mark.parametrize("limits", [(6, 6), (6, 3), (4, 1)])
def test_dbsf_normalises_each_channel_by_mean_and_three_sample_stds(
    ranked: VectorStore, limits: tuple[int, int]
) -> None:
    query = HybridQuery(
        [ChannelQuery("a", at(0), limits[0], weight=5.0),  # DBSF ignores weights
         ChannelQuery("b", at(0), limits[1])],
        limit=6, tenant=TENANT, fusion="dbsf",
    )
    expected = dbsf([ranking(A_ANGLES, limits[0]), ranking(B_ANGLES, limits[1])])

    assert fuse(query, ranked) == pytest.approx(expected, rel=1e-4)
    order = [hit.record.id for hit in ranked.hybrid_search(query)]
    assert order == sorted(expected, key=lambda key: -expected[key])


def test_channel_hits_are_the_ranks_the_fusion_used(ranked: VectorStore) -> None:
    query = HybridQuery([ChannelQuery("a", at(0), 4), ChannelQuery("b", at(0), 4)],
                        limit=3, tenant=TENANT, rrf_k=5, with_channel_hits=True)
    for hit in ranked.hybrid_search(query):
        assert hit.score == pytest.approx(
            sum(1 / (5 - 1 + c.rank) for c in hit.channels.values()), rel=1e-5
        )
        for name, angles in (("a", A_ANGLES), ("b", B_ANGLES)):
            if name in hit.channels:
                standing = hit.channels[name]
                assert ranking(angles, 4)[standing.rank - 1][0] == hit.record.id
                assert standing.score == pytest.approx(
                    math.cos(math.radians(angles[hit.record.id])), abs=1e-5)
    plain = ranked.hybrid_search(replace_channel_hits(query, False))
    assert all(not hit.channels for hit in plain)


def replace_channel_hits(query: HybridQuery, value: bool) -> HybridQuery:
    """The same query with ``with_channel_hits`` set to ``value``."""
    return HybridQuery(query.channels, query.limit, query.tenant, query.fusion, query.rrf_k,
                       query.filter, value)


# -- the lexical channel ----------------------------------------------------------------------

TITLES = {
    "m1": "Casablanca",
    "m2": "The Running Man",
    "m3": "Toy Story",
    "m4": "Toy Story 2",
    "m5": "Zardoz",
    "m6": "A Man Escaped",
    "m7": "The Man Who Knew Too Much",
    "m8": "Run Lola Run",
    "m9": "The Story of Adele H.",
    "m10": "Of Gods and Men",
}


@pytest.fixture(scope="module")
def encoder() -> LexicalEncoder:
    """The default English BM25 encoder."""
    return LexicalEncoder()


@pytest.fixture
def films(store: VectorStore, encoder: LexicalEncoder) -> VectorStore:
    """The titles indexed on the lexical channel only (and a dummy dense vector)."""
    vectors = encoder.encode_documents(list(TITLES.values()))
    store.upsert([
        StoredItem(ItemRecord(id=key, tenant=TENANT, title=title),
                   {"a": at(0), "lexical": vector})
        for (key, title), vector in zip(TITLES.items(), vectors, strict=True)
    ])
    return store


def lexical(store: VectorStore, encoder: LexicalEncoder, text: str, limit: int = 10) -> list[str]:
    """Item ids found for ``text`` on the lexical channel alone."""
    (vector,) = encoder.encode_queries([text])
    query = HybridQuery([ChannelQuery("lexical", vector, limit)], limit=limit, tenant=TENANT)
    return [hit.record.id for hit in store.hybrid_search(query)]


def test_bm25_vectors_are_sparse_vectors(encoder: LexicalEncoder) -> None:
    docs = encoder.encode_documents(["The Running Man runs", "Zardoz", ""])
    (query,) = encoder.encode_queries(["running runs RUN zardoz"])

    assert encoder.name == "bm25 (english, stemmed)"
    for vector in [*docs, query]:
        assert isinstance(vector, SparseVector)
        assert vector.indices.dtype == np.int64 and vector.values.dtype == np.float32
        assert (np.diff(vector.indices) > 0).all()
    assert len(docs[0]) == 2  # run (twice: a higher weight) and man; "the" is a stopword
    assert docs[0].values.max() > docs[1].values.max() > 0
    assert len(docs[2]) == 0
    assert len(query) == 2 and (query.values == 1.0).all()  # presence; IDF is the store's


def test_stemming_case_accents_and_stopwords(encoder: LexicalEncoder) -> None:
    assert encoder.terms("running") == encoder.terms("Runs") == encoder.terms("RUN")
    assert encoder.terms("café") == encoder.terms("Cafe")
    assert encoder.terms("the of and was") == frozenset()
    unstemmed = LexicalEncoder(LexicalSettings(stemming=False, stopwords=False))
    assert unstemmed.terms("running") != unstemmed.terms("runs")
    assert len(unstemmed.terms("the man")) == 2
    assert unstemmed.name == "bm25 (english, not stemmed, no stopwords)"
    with pytest.raises(InvalidInput, match="language"):
        LexicalEncoder(LexicalSettings(language="klingon"))


def test_matched_terms_names_the_query_words_found(encoder: LexicalEncoder) -> None:
    document = "Casablanca. A man runs through the night"
    assert encoder.matched_terms("The runners were RUNNING to Casablanca", document) == [
        "RUNNING", "Casablanca"
    ]
    assert encoder.matched_terms("run running runs, man", document) == ["run", "man"]
    assert encoder.matched_terms("the of to", document) == []
    assert encoder.matched_terms("Zardoz", document) == []
    # Only the words the text shares: "time" is not in it, so "night-time" is not either.
    assert encoder.matched_terms("night-time café", "Night at the Cafe") == ["night", "café"]
    assert encoder.matched_terms("night-time café", "Night time at the Cafe") == [
        "night-time", "café"]


def test_an_exact_title_finds_its_item_first(films: VectorStore, encoder: LexicalEncoder) -> None:
    for key, title in TITLES.items():
        assert lexical(films, encoder, title)[0] == key, title


def test_a_rare_word_outranks_common_ones(films: VectorStore, encoder: LexicalEncoder) -> None:
    # "man" and "story" are in several titles, "zardoz" in one: IDF puts it first.
    assert lexical(films, encoder, "story of a man named zardoz")[0] == "m5"
    assert lexical(films, encoder, "lola and the man")[0] == "m8"


def test_stemming_finds_other_forms(films: VectorStore, encoder: LexicalEncoder) -> None:
    assert set(lexical(films, encoder, "runs")) == {"m2", "m8"}
    assert lexical(films, encoder, "running lola")[0] == "m8"
    assert set(lexical(films, encoder, "men")) == {"m10"}  # the stemmer keeps men apart from man


def test_a_query_of_stopwords_finds_nothing(films: VectorStore, encoder: LexicalEncoder) -> None:
    assert lexical(films, encoder, "the of and a") == []
    (empty,) = encoder.encode_queries(["who was"])
    query = HybridQuery([ChannelQuery("a", at(0), 3), ChannelQuery("lexical", empty, 3)],
                        limit=3, tenant=TENANT)
    assert len(films.hybrid_search(query)) == 3  # the empty channel is dropped, not an error
