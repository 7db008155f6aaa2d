"""First-stage relevance on near-identical codes, with the real MiniLM and CLIP off.

Four drills whose codes are anagrams of each other (XK-4471, XK-4417, XK-7441,
XK-1744). MiniLM sees them as nearly the same text and puts the wrong one first
for most ways of writing a code; BM25 with joined codes ranks the exact one
first, and the search must too, however the code is written, on both store
backends. Also: the text channel, which the fused vector repeats when CLIP is off,
is searched once; matched terms are the tokens an item really shares; a store
indexed by another lexical analyser is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_edge import Bm25

from engine.config import EngineConfig
from engine.domain import (
    ChannelHit,
    FusedHit,
    InvalidInput,
    ItemInput,
    ItemRecord,
    SchemaMismatch,
    SearchRequest,
    SearchResult,
)
from engine.encoders import LexicalEncoder, LexicalSettings
from engine.runtime.engine import Engine
from engine.search.retriever import IDENTIFIER, HybridRetriever, exact_first
from engine.store import EdgeStore, ServerStore, VectorSchema
from tests.store_fixtures import QDRANT_WARNINGS

pytestmark = QDRANT_WARNINGS

DRILLS = {
    "XK-4471": ("hammer drill", "800 W, for masonry and concrete."),
    "XK-4417": ("cordless drill", "18 V, two batteries and a charger."),
    "XK-7441": ("impact drill", "Variable speed, keyless chuck."),
    "XK-1744": ("drill driver", "Compact, with a belt clip."),
}


def spellings(code: str) -> list[str]:
    """The ways a person types one code: as printed, in a phrase, spaced, run together."""
    prefix, number = code.split("-")
    return [code, f"drill {code}", f"{code} drill", f"{prefix} {number}",
            f"{prefix}{number}".lower(), code.lower()]


@pytest.fixture(scope="module", params=["edge", "server"])
def drills(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Engine]:
    """An engine on the packaged MiniLM, CLIP off, holding the four drills; on qdrant-edge and
    on qdrant-client (``:memory:`` standing in for a server)."""
    config = EngineConfig.load(device="cpu", clip={"enabled": False}, rerank={"model": ""},
                               store={"data_dir": tmp_path_factory.mktemp("drills") / "store"})
    engine = Engine.from_config(config)
    if request.param == "server":
        edge, engine.store = engine.store, ServerStore(QdrantClient(":memory:"), engine.schema,
                                                       collection="drills")
        edge.close()
    items = [ItemInput(ItemRecord(id=code, title=f"{code} {title}", text=text))
             for code, (title, text) in DRILLS.items()]
    assert engine.upsert(items) == len(DRILLS)
    yield engine
    engine.close()


def search(engine: Engine, text: str, weights: dict[str, float] | None = None,
           tenant: str = "default") -> SearchResult:
    """The engine's search of the drills with explanations and no re-ranking."""
    return engine.search(SearchRequest(text=text, image=None, top_k=4, tenant=tenant,
                                       explain=True, rerank=False, weights=weights or {}))


def top(result: SearchResult) -> str:
    return result.hits[0].record.id


@pytest.mark.slow
def test_dense_alone_puts_near_identical_codes_first(drills: Engine) -> None:
    # The premise: without the lexical channel, most spellings find another drill first.
    dense = {text: top(search(drills, text, weights={"lexical": 0}))
             for code in DRILLS for text in spellings(code)}
    wrong = [text for text, found in dense.items() if found.replace("-", "") not in
             text.upper().replace("-", "").replace(" ", "")]
    assert dense["XK-4417"] != "XK-4417"
    assert len(wrong) >= len(dense) // 2, dense


@pytest.mark.slow
@pytest.mark.parametrize("code", list(DRILLS))
def test_the_exact_code_comes_first_however_written(drills: Engine, code: str) -> None:
    for text in spellings(code):
        result = search(drills, text)
        assert top(result) == code, (text, [h.record.id for h in result.hits])


@pytest.mark.slow
def test_without_the_fold_and_the_identifier_rule_a_wrong_code_wins(drills: Engine) -> None:
    # What the issue saw: fused and text (the same vector without CLIP) and lexical, by RRF.
    retriever = HybridRetriever(drills.store, drills.config.retrieval)
    wrong = []
    for code in DRILLS:
        for text in spellings(code):
            request = SearchRequest(text=text, image=None, top_k=4, tenant="default")
            hits, _, channels = retriever.retrieve(drills.vectoriser.query(text, None), request, 4)
            assert channels == ["fused", "text", "lexical"]
            wrong += [text] if hits[0].record.id != code else []
    assert wrong


@pytest.mark.slow
def test_the_code_outweighs_the_other_words(drills: Engine) -> None:
    # XK-4417 is a screwdriver here: "drill XK-4417" matches the drills' words and meaning
    # better (the hammer drill: text #2, lexical #2, against the screwdriver's #4 and #1),
    # and RRF of text and lexical puts a drill first. The code the user typed decides.
    tools = {"XK-4417": ("screwdriver", "Compact 3.6 V screwdriver with bits."),
             "XK-4471": ("hammer drill", "Drill for drilling masonry; a drill that drills."),
             "XK-7441": ("impact drill", "Impact drill, variable speed."),
             "XK-1744": ("drill driver", "Drill driver with a belt clip.")}
    drills.upsert([ItemInput(ItemRecord(id=code, tenant="tools", title=f"{code} {title}",
                                        text=text)) for code, (title, text) in tools.items()])
    for text in ("drill XK-4417", "XK-4417 drill", "drill xk4417", "drill XK 4417"):
        request = SearchRequest(text=text, image=None, top_k=4, tenant="tools")
        encoded = drills.vectoriser.query(text, None)
        rrf_only, _, _ = drills.pipeline.retriever.retrieve(
            encoded, request, 4, duplicates=drills.vectoriser.duplicates(encoded))
        assert rrf_only[0].record.id != "XK-4417", text  # a drill, by words and meaning
        assert top(search(drills, text, tenant="tools")) == "XK-4417", text


@pytest.mark.slow
def test_text_is_searched_once_when_clip_is_off(drills: Engine,
                                                caplog: pytest.LogCaptureFixture) -> None:
    result = search(drills, "XK-4417")
    assert result.channels == ["text", "lexical", IDENTIFIER, "fused (folded into text)"]
    assert all("fused" not in e.channels for e in result.explanations or [])
    assert drills.vectoriser.duplicates(drills.vectoriser.query("drill", None)) == {
        "fused": "text"}
    # A channel switched off is not a duplicate to fold: fused alone is searched then.
    alone = search(drills, "XK-4417", weights={"text": 0, "lexical": 0})
    assert alone.channels == ["fused"]
    retriever = HybridRetriever(drills.store, drills.config.retrieval)
    with caplog.at_level(logging.INFO, logger="engine.search.retriever"):
        for _ in range(2):
            request = SearchRequest(text="drill", image=None, top_k=4, tenant="default")
            encoded = drills.vectoriser.query("drill", None)
            retriever.retrieve(encoded, request, 4,
                               duplicates=drills.vectoriser.duplicates(encoded))
    folds = [r.getMessage() for r in caplog.records if "searched once" in r.getMessage()]
    assert len(folds) == 1 and "'fused' repeats 'text'" in folds[0]


@pytest.mark.slow
def test_explanations_name_the_shared_tokens_and_the_identifier(drills: Engine) -> None:
    result = search(drills, "XK-4417")
    explained = {h.record.id: e for h, e in zip(result.hits, result.explanations or [],
                                                 strict=True)}
    assert explained["XK-4417"].matched_terms == ["XK-4417"]
    assert explained["XK-4417"].channels[IDENTIFIER] == ChannelHit(1, 1.0)
    for other in ("XK-4471", "XK-7441", "XK-1744"):
        assert explained[other].matched_terms == ["XK"]  # not "XK-4417"
        assert IDENTIFIER not in explained[other].channels
    spaced = search(drills, "drill XK 4417")
    assert spaced.explanations and spaced.explanations[0].matched_terms == ["drill", "XK 4417"]


@pytest.mark.slow
def test_lexical_off_leaves_dense_order_and_no_identifier_rule(drills: Engine) -> None:
    hybrid = search(drills, "XK-4417")
    dense = search(drills, "XK-4417", weights={"lexical": 0})
    assert dense.channels == ["text", "fused (folded into text)"]
    assert top(dense) != top(hybrid) == "XK-4417"


# --- the analyser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lexical() -> LexicalEncoder:
    return LexicalEncoder()


def test_code_spellings_share_one_joined_term(lexical: LexicalEncoder) -> None:
    (joined,) = lexical.identifiers("xk4417")
    for text in ("XK-4417", "xk4417", "XK 4417", "xk_4417", "XK/4417", "drill XK-4417 (new)"):
        assert lexical.identifiers(text) == {joined}, text
        assert joined in lexical.terms(text), text
    assert lexical.terms("XK-4417") == lexical.terms("xk 4417")  # parts and the joined form
    assert lexical.identifiers("XK-4471") != {joined}
    assert lexical.identifiers("XK-4417 or XK-1744") == lexical.identifiers(
        "xk1744") | {joined}


@pytest.mark.parametrize("text", [
    "Tux Paint 0.9.22", "top 10 films", "the 1990s", "19th century", "released in 2020",
    "3.5 inch", "night-time O'Reilly", "mp 3",
])
def test_texts_without_codes_keep_their_bm25_vectors(lexical: LexicalEncoder, text: str) -> None:
    assert lexical.identifiers(text) == frozenset()
    raw = Bm25(LexicalSettings().bm25_config())
    (document,) = lexical.encode_documents([text])
    expected = raw.embed_document(text)
    order = np.argsort(expected.indices)
    np.testing.assert_array_equal(document.indices, np.asarray(expected.indices)[order])
    np.testing.assert_allclose(document.values, np.asarray(expected.values)[order], rtol=1e-6)


def test_a_code_adds_exactly_its_joined_term(lexical: LexicalEncoder) -> None:
    plain = lexical.terms("cordless drill")
    coded = lexical.terms("cordless drill XK-4417")
    assert coded - plain == lexical.terms("xk 4417")  # xk, 4417 and xk4417
    for text in ("ISO 9001", "i7-8700K", "COVID-19", "B-12", "xk4417"):
        assert lexical.identifiers(text), text


def test_matched_terms_are_the_tokens_the_text_shares(lexical: LexicalEncoder) -> None:
    document = "XK-4471 hammer drill, 800 W"
    assert lexical.matched_terms("XK-4417", document) == ["XK"]
    assert lexical.matched_terms("XK-4471", document) == ["XK-4471"]
    assert lexical.matched_terms("xk4471 drills", document) == ["xk4471", "drills"]
    assert lexical.matched_terms("xk 4471", document) == ["xk 4471"]
    assert lexical.matched_terms("4471 XK", document) == ["4471", "XK"]
    assert lexical.matched_terms("xk4417", document) == []


def test_analyser_names_its_version_and_settings(lexical: LexicalEncoder) -> None:
    assert lexical.analyser.startswith("mmrec-bm25/2 language=english stemming=True")
    other = LexicalEncoder(LexicalSettings(stemming=False))
    assert other.analyser != lexical.analyser


# --- exact identifiers first, alone ------------------------------------------------------


def hit(item_id: str, score: float, text: str) -> FusedHit:
    return FusedHit(ItemRecord(id=item_id, title=text), score)


def test_exact_first_moves_holders_up_in_fused_order(lexical: LexicalEncoder) -> None:
    hits = [hit("a", 0.9, "XK-4471 drill"), hit("b", 0.8, "XK-4417 drill"),
            hit("c", 0.7, "drill"), hit("d", 0.6, "XK-4417 and XK-1744 set"),
            hit("e", 0.5, "xk4417 battery")]
    codes = lexical.identifiers("XK-4417 XK-1744")
    ordered, moved = exact_first(hits, codes, lexical.identifiers, with_standing=True)
    assert [h.record.id for h in ordered] == ["d", "b", "e", "a", "c"]
    assert moved == 3
    assert [h.channels.get(IDENTIFIER) for h in ordered] == [
        ChannelHit(1, 2.0), ChannelHit(2, 1.0), ChannelHit(3, 1.0), None, None]
    assert [h.score for h in ordered] == [0.6, 0.8, 0.5, 0.9, 0.7]  # scores stay the fusion's
    quiet, _ = exact_first(hits, codes, lexical.identifiers, with_standing=False)
    assert all(not h.channels for h in quiet)


# --- a store indexed by the old analyser -------------------------------------------------


def test_an_edge_store_of_another_analyser_is_refused(tmp_path: Path,
                                                      lexical: LexicalEncoder) -> None:
    old = VectorSchema({"fused": 4}, sparse=("lexical",))  # as stores were before analysers
    EdgeStore(tmp_path / "data", old).close()
    new = VectorSchema({"fused": 4}, sparse=("lexical",), analysers={"lexical": lexical.analyser})
    with pytest.raises(SchemaMismatch, match=r"did not record its analyser.*Re-index"):
        EdgeStore(tmp_path / "data", new)
    EdgeStore(tmp_path / "fresh", new).close()
    EdgeStore(tmp_path / "fresh", new).close()  # the same analyser opens again
    other = VectorSchema({"fused": 4}, sparse=("lexical",), analysers={"lexical": "bm25/9"})
    with pytest.raises(SchemaMismatch, match="indexed with analyser 'mmrec-bm25/2"):
        EdgeStore(tmp_path / "fresh", other)


def test_a_server_collection_of_another_analyser_is_refused(lexical: LexicalEncoder) -> None:
    client = QdrantClient(":memory:")
    old = VectorSchema({"fused": 4}, sparse=("lexical",))
    ServerStore(client, old, collection="old").close()
    new = VectorSchema({"fused": 4}, sparse=("lexical",), analysers={"lexical": lexical.analyser})
    with pytest.raises(SchemaMismatch, match=r"did not record its analyser.*Re-index"):
        ServerStore(client, new, collection="old")
    ServerStore(client, new, collection="new").close()
    ServerStore(client, new, collection="new").close()
    client.close()


def test_the_schema_keeps_its_analysers_through_the_manifest() -> None:
    schema = VectorSchema({"fused": 4}, sparse=("lexical",), analysers={"lexical": "bm25/2"})
    assert VectorSchema.from_json(schema.to_json()) == schema
    old = VectorSchema.from_json({"dense": {"fused": 4}, "sparse": ["lexical"]})
    assert old.analysers == {} and old.differences(old) == []
    assert schema.differences(VectorSchema({"fused": 4}, sparse=("lexical",))) == [
        "sparse vector 'lexical' was indexed with analyser 'bm25/2'; none is configured"]
    with pytest.raises(InvalidInput, match="not sparse vectors"):
        VectorSchema({"fused": 4}, analysers={"fused": "bm25/2"})
