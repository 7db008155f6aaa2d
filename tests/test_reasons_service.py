"""Reasons end to end: explanations over real gRPC name the history items by id and title and
carry the sentence built from the facts; with a tiny random LLM in the recommender, its
gibberish is rejected and the plain sentence takes its place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.cli.render import why
from engine.client import MmrecClient
from engine.domain import (
    Event,
    Explanation,
    ItemInput,
    ItemRecord,
    RecommendRequest,
    SearchHit,
    SearchResult,
)
from engine.rerank.facts import facts_of, natural_title, plain_sentence
from engine.rerank.faithfulness import FACTS, REJECTIONS
from engine.runtime.engine import Engine
from engine.service import convert
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, make_config
from tests.test_service import upsert
from tests.tiny_llm import make_tiny_llm

GENRES = {"m1": ["Animation", "Comedy"], "m2": ["Animation", "Musical"],
          "m3": ["Animation", "Comedy", "Musical"], "m4": ["Horror", "Sci-Fi"],
          "m5": ["Action", "Sci-Fi"], "m6": ["Crime", "Drama"]}
TITLES = {"m1": "Toy Story", "m2": "Lion King, The", "m3": "Aladdin", "m4": "Alien",
          "m5": "Aliens", "m6": "Heat"}
FILMS = [pb.Item(id=i, title=TITLES[i], text="A film.",
                 attributes={"year": 1990 + n, "genres": GENRES[i]})
         for n, i in enumerate(TITLES)]
LIKED = ("m1", "m2")


def check_explanation(item_id: str, because_of: list[str], titles: list[str], shared: list[str],
                      reason: str) -> None:
    """The history items come with their titles, and the sentence names the first of them."""
    assert because_of and set(because_of) <= set(LIKED)
    assert titles == [TITLES[i] for i in because_of]
    theirs = {g for i in because_of for g in GENRES[i]}
    assert shared == [g for g in GENRES[item_id] if g in theirs]
    assert reason.startswith(f"Because you liked {natural_title(titles[0])}")


def test_recommend_explanations_name_history_items_by_title(
        server: ServerThread, stub: pb_grpc.RecommenderStub) -> None:
    assert upsert(stub, *FILMS).upserted == len(FILMS)
    events = [pb.Event(user_id="ann", item_id=i, kind="like", timestamp=t)
              for t, i in enumerate(LIKED, start=1)]
    assert stub.RecordEvents(iter(events), timeout=30).recorded == 2
    reply = stub.Recommend(pb.RecommendRequest(user_id="ann", top_k=4, explain=True), timeout=30)
    explained = [r for r in reply.results if r.explanation.because_of]
    assert explained, "no result was attributed to the history"
    for r in explained:
        e = r.explanation
        check_explanation(r.id, list(e.because_of), list(e.because_of_titles),
                          list(e.shared_attributes), e.reason)
        assert (e.reason_source, e.reason_rejected) == (FACTS, "")

    with MmrecClient(server.target) as client:
        result = client.recommend(user_id="ann", top_k=4, explain=True)
    assert result.explanations is not None
    for hit, e in zip(result.hits, result.explanations, strict=True):
        if e.because_of:
            check_explanation(hit.record.id, e.because_of, e.because_of_titles,
                              e.shared_attributes, e.reason)
            line = why(e)
            assert f"{e.because_of_titles[0]} ({e.because_of[0]})" in line and e.reason in line
            assert e.reason == plain_sentence(facts_of(hit.record, e))  # rebuilt by a client


def test_search_explanations_carry_the_plain_sentence(stub: pb_grpc.RecommenderStub) -> None:
    assert upsert(stub, *FILMS).upserted == len(FILMS)
    reply = stub.Search(pb.SearchRequest(text="aliens", top_k=6, explain=True), timeout=30)
    by_id = {r.id: r.explanation for r in reply.results}
    assert by_id["m5"].reason == "Matches 'aliens'." and by_id["m5"].reason_source == FACTS
    assert all(not e.because_of and e.reason for e in by_id.values())


@pytest.fixture
def llm_engine(tmp_path: Path, tiny_text_dir: Path) -> Iterator[Engine]:
    llm = make_tiny_llm(tmp_path / "tiny-llm")
    engine = Engine.from_config(make_config(tmp_path / "store", tiny_text_dir, llm_dir=llm))
    yield engine
    engine.close()


def test_recommender_replaces_the_llm_gibberish_by_the_plain_sentence(llm_engine: Engine
                                                                       ) -> None:
    llm_engine.upsert([ItemInput(ItemRecord(id=i.id, title=i.title, text=i.text,
                                            attributes={"genres": GENRES[i.id]}))
                       for i in FILMS])
    llm_engine.record_events([Event("ann", i, "like", 0.0, t)
                              for t, i in enumerate(LIKED, start=1)])
    result = llm_engine.recommend(RecommendRequest(tenant="default", user_id="ann", top_k=3,
                                                   explain=True, explain_reason=True,
                                                   budget_ms=30_000))
    assert result.explanations is not None
    for hit, e in zip(result.hits, result.explanations, strict=True):
        assert e.reason_source == FACTS and e.reason_rejected in REJECTIONS
        assert e.reason == plain_sentence(facts_of(hit.record, e))
    plain = llm_engine.recommend(RecommendRequest(tenant="default", user_id="ann", top_k=3,
                                                  explain=True))
    assert plain.explanations is not None
    assert [e.reason_rejected for e in plain.explanations] == [""] * 3  # not asked: no LLM


def test_the_new_explanation_fields_cross_the_wire_both_ways() -> None:
    explanation = Explanation(
        rank=1, fused_rank=1, fused_score=0.5, because_of=["m1", "gone"],
        because_of_titles=["Toy Story", ""], shared_attributes=["Animation"],
        reason="Because you liked Toy Story and gone (Animation).", reason_source=FACTS,
        reason_rejected="unknown_title")
    result = SearchResult(hits=[SearchHit(ItemRecord(id="m3", title="Aladdin"), 0.5)],
                          channels=["fused"], explanations=[explanation])
    wire = pb.SearchResponse.FromString(convert.search_response(result).SerializeToString())
    assert list(wire.results[0].explanation.because_of_titles) == ["Toy Story", ""]
    assert convert.search_result_from_response(wire) == result
    assert why(explanation).endswith(
        "because of: Toy Story (m1), gone; shares: Animation. Because you liked Toy Story and "
        "gone (Animation). [facts; the LLM's sentence was rejected: unknown_title]")
