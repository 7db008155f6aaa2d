"""A thin, typed Python client for the mmrec gRPC service: domain types in and out.

    from engine.client import MmrecClient

    with MmrecClient("127.0.0.1:50051") as client:
        for hit in client.search(text="space adventure", top_k=5).hits:
            print(f"{hit.score:.3f} {hit.record.title}")

Arguments are keywords with plain values or ``engine.domain`` types (``ItemRecord``,
``Event``, ``ItemFilter``); answers are ``engine.domain`` types (``SearchResult``,
``RecommendResult``, ``Erasure``, ``EngineInfo``) or the small reports below. No
protobuf type appears in a public signature: ``engine.service.convert`` turns them
into messages and back, the same code the service uses, so both ends agree.

Errors arrive as ``engine.domain`` exceptions carrying the server's message and,
in ``status``, its gRPC status name: INVALID_ARGUMENT is ``InvalidInput``,
NOT_FOUND ``NotFound``, FAILED_PRECONDITION ``FailedPrecondition``, UNAVAILABLE
(the service is down or unreachable) ``Unavailable``, UNAUTHENTICATED
``Unauthenticated`` (no key, or not a valid one), PERMISSION_DENIED
``PermissionDenied`` (the key's role or tenants do not cover the call), any other
status ``RemoteError``. A fusion or strategy name the contract does not know raises
``InvalidInput`` before any call is made.

A service with auth on wants an API key (``mmrec keys create``) on every call:
``MmrecClient(target, api_key=KEY)`` sends it as ``authorization: Bearer KEY``. TLS:
``root_certificates`` (PEM bytes or a file) trusts a server certificate, ``tls=True``
the system's roots; ``private_key`` and ``certificate_chain`` are the client's own for
mTLS.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.domain import (
    EngineInfo,
    Erasure,
    Event,
    Fusion,
    ItemFilter,
    ItemRecord,
    RecommendResult,
    SearchResult,
)
from engine.service import convert
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from engine.service.status import error_from_status

SERVICE_NAME = "mmrec.v1.Recommender"


@dataclass(frozen=True, slots=True)
class UpsertReport:
    """What UpsertItems stored and what it rejected (index in the stream, id, reason)."""

    upserted: int
    rejected: list[tuple[int, str, str]]


@dataclass(frozen=True, slots=True)
class EventReport:
    """What RecordEvents recorded and refused (index in the stream, reason)."""

    recorded: int
    users_updated: int
    rejected: list[tuple[int, str]]


class _DomainErrors:
    """The generated stub, with each call's ``grpc.RpcError`` raised as its domain error."""

    def __init__(self, stub: pb_grpc.RecommenderStub,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, rpc: str) -> Callable[..., Any]:
        method = getattr(self._stub, rpc)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._metadata:
                kwargs.setdefault("metadata", self._metadata)
            try:
                return method(*args, **kwargs)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                raise error_from_status(code, details or "") from exc

        return call


class MmrecClient:
    """Blocking client over one channel; use as a context manager or call :meth:`close`."""

    def __init__(self, target: str, *, timeout: float | None = 30.0, api_key: str | None = None,
                 root_certificates: bytes | Path | None = None, tls: bool = False,
                 private_key: bytes | Path | None = None,
                 certificate_chain: bytes | Path | None = None) -> None:
        """Open a channel to ``target`` (host:port); TLS when ``tls`` or any PEM is given."""
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.max_send_message_length", 32 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        pems = [_pem(p) for p in (root_certificates, private_key, certificate_chain)]
        if tls or any(pem is not None for pem in pems):
            credentials = grpc.ssl_channel_credentials(*pems)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        metadata = (("authorization", f"Bearer {api_key.strip()}"),) if api_key else ()
        self._stub = _DomainErrors(pb_grpc.RecommenderStub(self._channel), metadata)
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
               tenant: str = "", filter: ItemFilter | None = None, fusion: Fusion | None = None,
               rrf_k: int = 0, weights: Mapping[str, float] | None = None, candidates: int = 0,
               explain: bool = False, explain_reason: bool = False, rerank: bool | None = None,
               rerank_top_k: int = 0, budget_ms: int = 0) -> SearchResult:
        """Search by text, image (encoded bytes or a file path) or both.

        Every knob of the Search contract is a keyword; zero or None means the
        server's default. ``filter``: conditions every result meets (applied inside
        each channel's search). ``fusion`` ("rrf" or "dbsf"), ``rrf_k``, ``weights``
        (per channel, 0 switches one off) and ``candidates`` (per channel) set how
        channels are fused. ``explain`` fills ``SearchResult.explanations``, each with a
        sentence built from its facts (the LLM's, when ``explain_reason`` and it passes the
        faithfulness checks: ``Explanation.reason_source``); ``rerank``, ``rerank_top_k`` and
        ``budget_ms`` control LLM re-ranking of the top candidates. ``SearchResult.stage_ms``
        holds the server's milliseconds per stage (encode, retrieve, rerank, explain).
        """
        data = image.read_bytes() if isinstance(image, Path) else (image or b"")
        message = pb.SearchRequest(text=text, image=data, top_k=top_k, tenant=tenant,
                                   explain=explain, explain_reason=explain_reason)
        _set_shared(message, filter=filter, fusion=fusion, rrf_k=rrf_k, weights=weights,
                    candidates=candidates, rerank=rerank, rerank_top_k=rerank_top_k,
                    budget_ms=budget_ms)
        response = self._stub.Search(message, timeout=self.timeout)
        return convert.search_result_from_response(response)

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
                  context: str = "", filter: ItemFilter | None = None,
                  include_seen: bool = False, strategy: str | None = None,
                  diversity: float | None = None, fusion: Fusion | None = None, rrf_k: int = 0,
                  weights: Mapping[str, float] | None = None, candidates: int = 0,
                  explain: bool = False, explain_reason: bool = False,
                  rerank: bool | None = None, rerank_top_k: int = 0,
                  budget_ms: int = 0) -> RecommendResult:
        """Recommendations for a user's recorded history and/or example items.

        Name whom or what for: ``user_id``, ``positive_ids`` (more like these;
        ``negative_ids``: less like these) or ``context`` text. ``filter``, the fusion
        knobs (``fusion``, ``rrf_k``, ``weights`` keyed by the channel names
        :meth:`info` lists, ``candidates``) and the re-rank knobs work as in
        :meth:`search`; ``strategy`` is one of ``engine.domain.STRATEGIES`` (None: the
        server's), ``diversity`` in [0, 1] applies MMR (None: off). Seen items are left
        out unless ``include_seen``; ``explain`` also says which history items led to
        each result (``Explanation.because_of``, with ``because_of_titles``) and why, in
        one sentence built from those facts (``Explanation.reason``); with
        ``explain_reason`` the LLM writes that sentence, checked against the facts.
        ``RecommendResult.stage_ms`` holds the server's milliseconds per stage.
        """
        message = pb.RecommendRequest(
            user_id=user_id, top_k=top_k, tenant=tenant, positive_ids=list(positive_ids),
            negative_ids=list(negative_ids), context=context, include_seen=include_seen,
            explain=explain, explain_reason=explain_reason,
            strategy=convert.strategy_to_message(strategy))
        if diversity is not None:
            message.diversity = diversity
        _set_shared(message, filter=filter, fusion=fusion, rrf_k=rrf_k, weights=weights,
                    candidates=candidates, rerank=rerank, rerank_top_k=rerank_top_k,
                    budget_ms=budget_ms)
        response = self._stub.Recommend(message, timeout=self.timeout)
        return convert.recommend_result_from_response(response)

    def delete_user(self, user_id: str, *, tenant: str = "") -> Erasure:
        """Erase everything stored about a user; the Erasure counts what was removed."""
        response = self._stub.DeleteUser(pb.DeleteUserRequest(user_id=user_id, tenant=tenant),
                                         timeout=self.timeout)
        return convert.erasure_from_response(response)

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


def _pem(value: bytes | Path | None) -> bytes | None:
    """PEM bytes given directly or as a file."""
    return value.read_bytes() if isinstance(value, Path) else value


def _set_shared(message: pb.SearchRequest | pb.RecommendRequest, *, filter: ItemFilter | None,
                fusion: Fusion | None, rrf_k: int, weights: Mapping[str, float] | None,
                candidates: int, rerank: bool | None, rerank_top_k: int, budget_ms: int) -> None:
    """Set the knobs Search and Recommend share (filter, fusion, re-ranking) on either request.

    The two requests carry these under the same field names, so one function
    keeps the two methods from drifting apart.
    """
    if filter:
        message.filter.CopyFrom(convert.filter_to_message(filter))
    message.hybrid.CopyFrom(convert.hybrid_to_message(fusion=fusion, rrf_k=rrf_k,
                                                      weights=weights, candidates=candidates))
    message.rerank_top_k, message.rerank_budget_ms = rerank_top_k, budget_ms
    if rerank is not None:
        message.rerank = rerank
