"""Domain <-> protobuf conversions round-trip: what the client writes the service reads back
unchanged, and what the service writes the client reads back unchanged.

Scores travel as float32 on the wire, so the values here are exact in float32.
"""

from __future__ import annotations

import inspect
import typing

import pytest

from engine.client import MmrecClient
from engine.domain import (
    STRATEGIES,
    ChannelHit,
    Erasure,
    Explanation,
    InvalidInput,
    ItemFilter,
    ItemRecord,
    Match,
    MatchAny,
    Range,
    RecommendResult,
    SearchHit,
    SearchResult,
)
from engine.service import convert
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb

FILTERS = {
    "empty": ItemFilter(),
    "equals": ItemFilter(must=(Match("genres", "Sci-Fi"), Match("year", 1979),
                               Match("restored", True))),
    "any_of": ItemFilter(must=(MatchAny("genres", ("Horror", "Thriller")),
                               MatchAny("year", (1979, 1986)))),
    "range": ItemFilter(must=(Range("year", lt=1990), Range("rating", gte=3.5, lte=5.0),
                              Range("votes", gt=10))),
    "must_not and ids": ItemFilter(must_not=(Match("genres", "Horror"), Range("year", gt=1995)),
                                   exclude_ids=("ml-183", "ml-176")),
}

FILM = ItemRecord(id="ml-50", title="Star Wars", text="A 1977 film. Genres: Action, Sci-Fi.",
                  attributes={"year": 1977, "genres": ["Action", "Sci-Fi"], "rating": 4.5})
OTHER = ItemRecord(id="ml-181", tenant="shop-b", title="Return of the Jedi")
HITS = [SearchHit(FILM, 0.5), SearchHit(OTHER, 0.25)]
EXPLANATIONS = [
    Explanation(rank=1, fused_rank=2, fused_score=0.5,
                channels={"fused": ChannelHit(1, 0.75), "lexical": ChannelHit(3, 2.5)},
                rerank_score=-1.25, matched_terms=["star"], reason="A space opera.",
                because_of=["ml-172"]),
    Explanation(rank=2, fused_rank=1, fused_score=0.25, channels={"text": ChannelHit(2, 0.5)}),
]


@pytest.mark.parametrize("wanted", FILTERS.values(), ids=FILTERS.keys())
def test_filter_round_trip(wanted: ItemFilter) -> None:
    message = convert.filter_to_message(wanted)
    assert convert.item_filter(message) == wanted
    again = pb.Filter.FromString(message.SerializeToString())    # and across the wire
    assert convert.filter_to_message(convert.item_filter(again)) == message


def test_filter_keeps_bools_apart_from_integers() -> None:
    (condition,) = convert.filter_to_message(ItemFilter(must=(Match("restored", True),))).must
    assert condition.equals.WhichOneof("kind") == "bool_value"
    (back,) = convert.item_filter(pb.Filter(must=[condition])).must
    assert back == Match("restored", True) and type(back.value) is bool


@pytest.mark.parametrize("explanations", [None, EXPLANATIONS], ids=["plain", "explained"])
def test_search_result_round_trip(explanations: list[Explanation] | None) -> None:
    result = SearchResult(hits=HITS, channels=["fused", "text", "lexical"], fusion="dbsf",
                          reranked=2, budget_exhausted=True, explanations=explanations)
    wire = pb.SearchResponse.FromString(convert.search_response(result).SerializeToString())
    assert convert.search_result_from_response(wire) == result


@pytest.mark.parametrize("explanations", [None, EXPLANATIONS], ids=["plain", "explained"])
def test_recommend_result_round_trip(explanations: list[Explanation] | None) -> None:
    result = RecommendResult(hits=HITS, channels=["behaviour", "fused"], fusion="rrf",
                             strategy="best_score", cold_start=False, reranked=1,
                             budget_exhausted=False, explanations=explanations)
    wire = pb.RecommendResponse.FromString(
        convert.recommend_response(result).SerializeToString())
    assert convert.recommend_result_from_response(wire) == result
    cold = RecommendResult(hits=[], channels=["popularity"], fusion="", strategy="",
                           cold_start=True)
    assert convert.recommend_result_from_response(convert.recommend_response(cold)) == cold


@pytest.mark.parametrize("erasure", [Erasure(events=3, seen=2, profile=True, cache_entries=1),
                                     Erasure(events=0, seen=0, profile=False, cache_entries=0)])
def test_erasure_round_trip(erasure: Erasure) -> None:
    assert convert.erasure_from_response(convert.erasure_response(erasure)) == erasure


def test_fusion_strategy_and_hybrid_round_trip() -> None:
    for fusion in (None, "rrf", "dbsf"):
        assert convert.FUSIONS[convert.fusion_to_message(fusion)] == fusion
    for strategy in (None, *STRATEGIES):
        assert convert.STRATEGIES[convert.strategy_to_message(strategy)] == strategy
    assert convert.strategy_to_message("") == pb.RECOMMEND_STRATEGY_UNSPECIFIED
    hybrid = convert.hybrid_to_message(fusion="dbsf", rrf_k=10, weights={"lexical": 2.0},
                                       candidates=40)
    assert (convert.FUSIONS[hybrid.fusion], hybrid.rrf_k, dict(hybrid.channel_weights),
            hybrid.candidates) == ("dbsf", 10, {"lexical": 2.0}, 40)
    assert convert.hybrid_to_message() == pb.HybridParams()
    with pytest.raises(InvalidInput, match="unknown fusion 'borda'"):
        convert.fusion_to_message("borda")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"unknown strategy 'random'.*'best_score'"):
        convert.strategy_to_message("random")


def _mentions_protobuf(hint: object) -> bool:
    module = getattr(hint, "__module__", "") or ""
    if module.startswith(("engine.service.proto", "google.protobuf")):
        return True
    return any(_mentions_protobuf(arg) for arg in typing.get_args(hint))


def test_client_signatures_have_no_protobuf_types() -> None:
    public = [fn for name, fn in inspect.getmembers(MmrecClient, inspect.isfunction)
              if not name.startswith("_")]
    assert {fn.__name__ for fn in public} >= {"search", "recommend", "delete_user", "info"}
    for fn in public:
        hints = typing.get_type_hints(fn)
        assert not [name for name, hint in hints.items() if _mentions_protobuf(hint)], fn
    search = inspect.signature(MmrecClient.search).parameters
    assert all(p.kind is p.KEYWORD_ONLY for name, p in search.items() if name != "self")
    assert {"filter", "fusion", "rrf_k", "weights", "candidates", "rerank_top_k",
            "explain_reason", "budget_ms"} <= set(search)
