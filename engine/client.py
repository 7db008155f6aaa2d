"""A thin, typed Python client for the mmrec gRPC service.

    with MmrecClient("127.0.0.1:50051") as client:
        for hit in client.search(text="space adventure", top_k=5):
            print(hit.score, hit.record.title)

Errors arrive as ``grpc.RpcError`` with the server's status code and message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.domain import EngineInfo, Event, Explanation, ItemRecord, RecommendResult, SearchHit
from engine.service import convert
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc

SERVICE_NAME = "mmrec.v1.Recommender"


@dataclass(frozen=True, slots=True)
class UpsertReport:
    """What UpsertItems stored and what it rejected (index in the stream, id, reason)."""

    upserted: int
    rejected: list[tuple[int, str, str]]


@dataclass(frozen=True, slots=True)
class SearchReply:
    """Hits best first, the channels searched, and how the ranking was made."""

    hits: list[SearchHit]
    channels: list[str]
    fusion: str = ""
    reranked: int = 0
    budget_exhausted: bool = False
    explanations: list[Explanation] | None = None


@dataclass(frozen=True, slots=True)
class EventReport:
    """What RecordEvents recorded and refused (index in the stream, reason)."""

    recorded: int
    users_updated: int
    rejected: list[tuple[int, str]]


class MmrecClient:
    """Blocking client over one channel; use as a context manager or call :meth:`close`."""

    def __init__(self, target: str, *, timeout: float | None = 30.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 32 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ])
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the service reports SERVING, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        while True:
            try:
                status = self._health.Check(request, timeout=2.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mmrec at {self.target} not serving after {timeout:.0f} s")
            time.sleep(0.2)

    def search(self, *, text: str = "", image: bytes | Path | None = None, top_k: int = 0,
               tenant: str = "", explain: bool = False, explain_reason: bool = False,
               rerank: bool | None = None, budget_ms: int = 0,
               request: pb.SearchRequest | None = None) -> SearchReply:
        """Search by text, image (bytes or a file path) or both.

        ``request`` may carry anything else the contract offers (filters, fusion
        parameters); the keyword arguments are set on top of it.
        """
        data = image.read_bytes() if isinstance(image, Path) else (image or b"")
        message = pb.SearchRequest()
        if request is not None:
            message.CopyFrom(request)
        message.text, message.image, message.top_k, message.tenant = text, data, top_k, tenant
        message.explain, message.explain_reason = explain, explain_reason
        message.rerank_budget_ms = budget_ms
        if rerank is not None:
            message.rerank = rerank
        response = self._stub.Search(message, timeout=self.timeout)
        return SearchReply(hits=convert.hits_from_response(response),
                           channels=list(response.channels), fusion=response.fusion,
                           reranked=response.reranked,
                           budget_exhausted=response.rerank_budget_exhausted,
                           explanations=convert.explanations_from_response(response))

    def upsert_items(self, items: Iterable[tuple[ItemRecord, bytes | None]]) -> UpsertReport:
        """Stream items (each with optional encoded image bytes) into the service."""

        def messages() -> Iterator[pb.UpsertItemsRequest]:
            for record, image in items:
                item = convert.record_to_item(record)
                if image:
                    item.image = image
                yield pb.UpsertItemsRequest(item=item)

        response = self._stub.UpsertItems(messages(), timeout=self.timeout)
        return UpsertReport(upserted=response.upserted,
                            rejected=[(r.index, r.id, r.reason) for r in response.rejected])

    def get_items(self, ids: Sequence[str], *, tenant: str = "") -> list[ItemRecord]:
        """Items by id, in the order asked (NOT_FOUND if any is unknown)."""
        response = self._stub.GetItems(pb.GetItemsRequest(ids=list(ids), tenant=tenant),
                                       timeout=self.timeout)
        return [convert.item_to_record(item) for item in response.items]

    def delete_items(self, ids: Sequence[str], *, tenant: str = "") -> tuple[int, list[str]]:
        """Delete items; returns (deleted count, ids that did not exist)."""
        response = self._stub.DeleteItems(pb.DeleteItemsRequest(ids=list(ids), tenant=tenant),
                                          timeout=self.timeout)
        return response.deleted, list(response.missing_ids)

    def record_events(self, events: Iterable[Event]) -> EventReport:
        """Stream interaction events; each valid one updates its user's profile at once."""
        messages = (convert.event_to_message(event) for event in events)
        response = self._stub.RecordEvents(messages, timeout=self.timeout)
        return EventReport(recorded=response.recorded, users_updated=response.users_updated,
                           rejected=[(r.index, r.reason) for r in response.rejected])

    def recommend(self, *, user_id: str = "", top_k: int = 0, tenant: str = "",
                  positive_ids: Sequence[str] = (), negative_ids: Sequence[str] = (),
                  context: str = "", include_seen: bool = False, rerank: bool | None = None,
                  explain: bool = False, strategy: str = "", diversity: float | None = None,
                  budget_ms: int = 0,
                  weights: dict[str, float] | None = None,
                  filter: pb.Filter | None = None) -> RecommendResult:
        """Recommendations for a user and/or example items (see RecommendRequest)."""
        request = pb.RecommendRequest(
            user_id=user_id, top_k=top_k, tenant=tenant, positive_ids=list(positive_ids),
            negative_ids=list(negative_ids), context=context, include_seen=include_seen,
            explain=explain, filter=filter, rerank_budget_ms=budget_ms,
            strategy={v: k for k, v in convert.STRATEGIES.items()}[strategy or None])
        if rerank is not None:
            request.rerank = rerank
        if diversity is not None:
            request.diversity = diversity
        if weights:
            request.hybrid.channel_weights.update(weights)
        response = self._stub.Recommend(request, timeout=self.timeout)
        return RecommendResult(hits=convert.hits_from_response(response),
                              channels=list(response.channels), fusion=response.fusion,
                              strategy=response.strategy, cold_start=response.cold_start,
                              reranked=response.reranked,
                              budget_exhausted=response.rerank_budget_exhausted,
                              explanations=convert.explanations_from_response(response))

    def delete_user(self, user_id: str, *, tenant: str = "") -> pb.DeleteUserResponse:
        """Erase a user; the response counts what was removed."""
        return self._stub.DeleteUser(pb.DeleteUserRequest(user_id=user_id, tenant=tenant),
                                     timeout=self.timeout)

    def info(self) -> EngineInfo:
        """Models, channels, item count and device of the service."""
        return convert.info_from_response(self._stub.GetInfo(pb.GetInfoRequest(),
                                                             timeout=self.timeout))

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> MmrecClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
