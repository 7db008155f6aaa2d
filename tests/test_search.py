"""Hybrid search, filters, LLM re-ranking under a budget and explanations, over real gRPC."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from engine.domain import ItemRecord
from engine.rerank import Blend, RerankQuery, RerankScores
from engine.runtime.engine import Engine
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, make_config
from tests.tiny_llm import make_tiny_llm

FILMS = [
    pb.Item(id="f1", title="Toy Story", text="Animated toys come alive.",
            attributes={"year": 1995, "genres": ["Animation", "Comedy"]}),
    pb.Item(id="f2", title="Alien", text="A crew in space meets a deadly creature.",
            attributes={"year": 1979, "genres": ["Horror", "Sci-Fi"]}),
    pb.Item(id="f3", title="Aliens", text="Marines fight creatures on a distant planet.",
            attributes={"year": 1986, "genres": ["Action", "Sci-Fi"]}),
    pb.Item(id="f4", title="Manhattan", text="A romantic comedy in New York.",
            attributes={"year": 1979, "genres": ["Comedy", "Romance"]}),
    pb.Item(id="f5", title="Zyzzyva", text="An obscure documentary.",
            attributes={"year": 2001, "genres": ["Documentary"]}),
]


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture
def llm_engine(tmp_path: Path, tiny_text_dir: Path, tiny_llm_dir: Path) -> Iterator[Engine]:
    engine = Engine.from_config(make_config(tmp_path / "store", tiny_text_dir,
                                            llm_dir=tiny_llm_dir))
    yield engine
    engine.close()


@pytest.fixture
def films(llm_engine: Engine) -> Iterator[pb_grpc.RecommenderStub]:
    srv = ServerThread(llm_engine, llm_engine.config)
    with grpc.insecure_channel(srv.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        reply = stub.UpsertItems(iter([pb.UpsertItemsRequest(item=i) for i in FILMS]), timeout=60)
        assert reply.upserted == len(FILMS)
        yield stub
    srv.stop()


def ids(reply: pb.SearchResponse) -> list[str]:
    return [r.id for r in reply.results]


def value(v: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, str):
        out.string_value = v
    else:
        out.number_value = v
    return out


def test_rare_word_found_by_lexical_and_explained(films: pb_grpc.RecommenderStub) -> None:
    reply = films.Search(pb.SearchRequest(text="zyzzyva", top_k=3, explain=True, rerank=False),
                         timeout=30)
    assert ids(reply)[0] == "f5"
    top = reply.results[0].explanation
    assert top.rank == 1 and top.fused_rank == 1 and list(top.matched_terms) == ["zyzzyva"]
    assert top.channels["lexical"].rank == 1 and top.channels["lexical"].score > 0
    assert not top.HasField("rerank_score") and reply.reranked == 0
    for rank, result in enumerate(reply.results, start=1):
        assert result.explanation.rank == rank
        assert result.explanation.fused_score == pytest.approx(result.score)
    # Lexical off: the rare word has no dense meaning to a random encoder, so the
    # explanation must say lexical did not take part.
    off = films.Search(pb.SearchRequest(text="zyzzyva", top_k=5, explain=True, rerank=False,
                                        hybrid=pb.HybridParams(channel_weights={"lexical": 0})),
                       timeout=30)
    assert "lexical" not in off.channels
    assert all("lexical" not in r.explanation.channels for r in off.results)


def test_filters(films: pb_grpc.RecommenderStub) -> None:
    def search(flt: pb.Filter) -> list[str]:
        reply = films.Search(pb.SearchRequest(text="film", top_k=10, filter=flt, rerank=False),
                             timeout=30)
        return sorted(ids(reply))

    genre = pb.Condition(key="genres", equals=value("Sci-Fi"))
    assert search(pb.Filter(must=[genre])) == ["f2", "f3"]
    old = pb.Condition(key="year", range=pb.NumericRange(lt=1990))
    assert search(pb.Filter(must=[old])) == ["f2", "f3", "f4"]
    assert search(pb.Filter(must=[old], must_not=[genre])) == ["f4"]
    any_of = pb.Condition(key="genres", any_of=pb.ValueList(values=[value("Romance"),
                                                                     value("Documentary")]))
    assert search(pb.Filter(must=[any_of], exclude_ids=["f5"])) == ["f4"]
    year = pb.Condition(key="year", equals=value(1979))
    assert search(pb.Filter(must=[year])) == ["f2", "f4"]


def test_dbsf_and_rrf_params(films: pb_grpc.RecommenderStub) -> None:
    # "Alien" alone ties "Aliens" on BM25 (one stem), and with the fused channel folded into
    # text that tie decides; the extra words make the lexical order unambiguous.
    query = "Alien deadly creature"
    rrf = films.Search(pb.SearchRequest(text=query, top_k=5, rerank=False,
                                        hybrid=pb.HybridParams(rrf_k=10)), timeout=30)
    assert rrf.fusion == "rrf" and ids(rrf)[0] == "f2"
    dbsf = films.Search(pb.SearchRequest(text=query, top_k=5, rerank=False,
                                         hybrid=pb.HybridParams(fusion=pb.FUSION_DBSF)),
                        timeout=30)
    assert dbsf.fusion == "dbsf" and ids(dbsf)[0] == "f2"


def test_rerank_reorders_and_explains(films: pb_grpc.RecommenderStub) -> None:
    reply = films.Search(pb.SearchRequest(text="space creatures", top_k=5, explain=True,
                                          rerank=True, rerank_top_k=4), timeout=60)
    assert reply.reranked == 4 and not reply.rerank_budget_exhausted
    expl = [r.explanation for r in reply.results]
    scored = [e for e in expl if e.HasField("rerank_score")]
    assert len(scored) == 4
    # The re-ranked head is sorted by LLM score; the rest keeps its fused order after it.
    assert [e.rerank_score for e in scored] == sorted((e.rerank_score for e in scored),
                                                      reverse=True)
    assert expl[:4] == scored and expl[4].fused_rank == 5
    assert sorted(e.fused_rank for e in expl) == [1, 2, 3, 4, 5]


def test_reason_is_generated_within_budget(films: pb_grpc.RecommenderStub) -> None:
    reply = films.Search(pb.SearchRequest(text="toys", top_k=2, explain=True,
                                          explain_reason=True, rerank=False), timeout=60)
    assert all(isinstance(r.explanation.reason, str) for r in reply.results)
    assert reply.results[0].explanation.reason  # a tiny random LM writes gibberish, but writes


class FakeSlowReranker:
    """A fake that takes 0.2 s per candidate: injects the one fault real parts lack, slowness."""

    name = "fake slow"
    blend = Blend(1.0)  # the LLM's order alone, so the reversal is visible

    def __init__(self) -> None:
        self.calls = 0

    def score(self, query: RerankQuery, candidates: Sequence[ItemRecord], *,
              deadline: float | None = None) -> RerankScores:
        scores: list[float | None] = []
        for i, _ in enumerate(candidates):
            if deadline is not None and time.monotonic() + 0.2 > deadline:
                scores += [None] * (len(candidates) - i)
                break
            time.sleep(0.2)
            scores.append(float(i))  # later candidates score higher: reverses the order
        done = sum(s is not None for s in scores)
        return RerankScores(scores=scores, scored=done, seconds=0.2 * done)


def test_budget_expiry_keeps_fused_order_for_the_rest(llm_engine: Engine,
                                                      films: pb_grpc.RecommenderStub) -> None:
    llm_engine.pipeline.rerank.reranker = FakeSlowReranker()
    fused = ids(films.Search(pb.SearchRequest(text="film", top_k=5, rerank=False), timeout=30))
    started = time.perf_counter()
    reply = films.Search(pb.SearchRequest(text="film", top_k=5, rerank=True,
                                          rerank_budget_ms=500), timeout=30)
    assert time.perf_counter() - started < 2.0
    assert reply.rerank_budget_exhausted and 1 <= reply.reranked < 5
    n = reply.reranked
    assert ids(reply)[:n] == list(reversed(fused[:n]))
    assert ids(reply)[n:] == fused[n:]
    # The gRPC deadline bounds the budget too.
    reply = films.Search(pb.SearchRequest(text="film", top_k=5, rerank=True,
                                          rerank_budget_ms=5_000), timeout=0.9)
    assert reply.rerank_budget_exhausted and reply.reranked < 5


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (pb.SearchRequest(text="x", hybrid=pb.HybridParams(channel_weights={"nope": 1})),
         grpc.StatusCode.INVALID_ARGUMENT, "unknown channel"),
        (pb.SearchRequest(text="x", hybrid=pb.HybridParams(channel_weights={"text": -1})),
         grpc.StatusCode.INVALID_ARGUMENT, ">= 0"),
        (pb.SearchRequest(text="x", hybrid=pb.HybridParams(
            channel_weights={"fused": 0, "text": 0, "lexical": 0, "clip": 0})),
         grpc.StatusCode.INVALID_ARGUMENT, "weight 0"),
        (pb.SearchRequest(text="x", filter=pb.Filter(must=[pb.Condition(key="year")])),
         grpc.StatusCode.INVALID_ARGUMENT, "set one of"),
        (pb.SearchRequest(text="x", filter=pb.Filter(must=[pb.Condition(
            key="year", equals=value(1.5))])), grpc.StatusCode.INVALID_ARGUMENT, "use `range`"),
        (pb.SearchRequest(text="x", filter=pb.Filter(must=[pb.Condition(
            key="", equals=value("a"))])), grpc.StatusCode.INVALID_ARGUMENT, "needs a `key`"),
        (pb.SearchRequest(text="x", filter=pb.Filter(must=[pb.Condition(
            key="year", range=pb.NumericRange())])), grpc.StatusCode.INVALID_ARGUMENT,
         "at least one bound"),
        (pb.SearchRequest(text="x", rerank_budget_ms=600_000), grpc.StatusCode.INVALID_ARGUMENT,
         "rerank_budget_ms"),
        (pb.SearchRequest(text="x", rerank_top_k=500), grpc.StatusCode.INVALID_ARGUMENT,
         "rerank_top_k"),
    ],
)
def test_search_parameter_validation(films: pb_grpc.RecommenderStub, request_: pb.SearchRequest,
                                     code: grpc.StatusCode, needle: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        films.Search(request_, timeout=30)
    assert err.value.code() == code and needle in err.value.details()


def test_rerank_requested_without_llm_is_failed_precondition(
        stub: pb_grpc.RecommenderStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(pb.SearchRequest(text="x", rerank=True), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "LLM is not loaded" in err.value.details()
    # Unset means the configured default, which quietly skips a missing LLM.
    assert stub.Search(pb.SearchRequest(text="x"), timeout=30).reranked == 0
