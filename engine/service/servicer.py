"""The mmrec.v1.Recommender servicer: validates requests and calls the engine.

Blocking work (encoders, store) runs on a bounded thread pool so the event
loop keeps answering health checks, and every call is bounded by the
request's deadline. With auth on, :class:`~engine.service.auth.ApiKeyInterceptor` has
checked the caller's key and role before a handler runs; the handlers check each request's
tenant against the key's (a unary call for another tenant is PERMISSION_DENIED, a streamed
message for one is rejected by index).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from engine.config import ServiceSettings
from engine.domain import (
    Event,
    ItemInput,
    MmrecError,
    NotFound,
    RecommendRequest,
    SearchRequest,
)
from engine.runtime import Engine
from engine.service import convert
from engine.service.auth import caller, require_tenant, tenant_view
from engine.service.keys import Principal
from engine.service.lanes import Lane
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from engine.service.status import mapped_errors
from engine.service.streams import StreamReader, Unread
from engine.service.validate import RequestValidator, tenant, user_id
from engine.service.wire import Malformed
from engine.store.retry import deadline_scope

log = logging.getLogger(__name__)

T = TypeVar("T")
UPSERT_BATCH = 64
EVENT_BATCH = 256


class RecommenderService(pb_grpc.RecommenderServicer):
    """gRPC front of an :class:`Engine`."""

    def __init__(self, engine: Engine, settings: ServiceSettings, *, auth: bool = False
                 ) -> None:
        self.engine = engine
        self.settings = settings
        self.auth = auth
        """Whether calls must carry a key (then each request's tenant is checked against it)."""
        self.validate = RequestValidator(settings, {*engine.schema.dense, *engine.schema.sparse})
        self.plain = Lane("plain", settings.workers, settings.limits.max_queued)
        self.llm = Lane("LLM", settings.llm_workers, settings.limits.max_queued)
        self._writes_since_build = 0

    async def _run(self, context: grpc.aio.ServicerContext, fn: Callable[..., T],
                   *args: object, lane: Lane | None = None) -> T:
        """Run blocking engine work off the event loop in a lane (default: the plain one),
        within the request's deadline; the store's retries see it too (``deadline_scope``)."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def bounded() -> T:
            with deadline_scope(deadline):
                return fn(*args)

        return await (lane or self.plain).run(bounded, timeout=remaining)

    def _scope(self, value: str) -> str:
        """The tenant a unary request names (empty: the default), when the caller may use it:
        PermissionDenied names the tenant otherwise."""
        return require_tenant(caller(self.auth), tenant(value))

    def _lane(self, query: SearchRequest | RecommendRequest) -> Lane:
        """The LLM lane for a request that will use the LLM, else the plain one."""
        rerank = self.engine.config.rerank.enabled if query.rerank is None else query.rerank
        return self.llm if rerank or query.explain_reason else self.plain

    # ----------------------------------------------------------------- Search
    @mapped_errors
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext
                     ) -> pb.SearchResponse:
        """Validate a search, encode the query and return the nearest items."""
        self._scope(request.tenant)
        query = self.validate.search(request, context.time_remaining())
        result = await self._run(context, self.engine.search, query, lane=self._lane(query))
        return convert.search_response(result)

    # ------------------------------------------------------------ UpsertItems
    @mapped_errors
    async def UpsertItems(self,
                          request_iterator: AsyncIterator[pb.UpsertItemsRequest | Malformed],
                          context: grpc.aio.ServicerContext) -> pb.UpsertItemsResponse:
        """Store a stream of items in batches; report each invalid one and keep going.

        Reading pauses while a batch is encoded, so gRPC flow control pushes
        back on a fast client instead of buffering the stream in memory.
        """
        principal = caller(self.auth)
        upserted = 0
        rejected: list[pb.RejectedItem] = []
        batch: dict[str, tuple[int, ItemInput]] = {}
        reader = StreamReader(request_iterator, self.settings.limits)
        async for index, message in reader:
            if isinstance(message, Malformed | Unread):  # reported; after a Malformed one, go on
                rejected.append(pb.RejectedItem(index=index, reason=str(message)))
                continue
            try:
                require_tenant(principal, tenant(message.item.tenant))
                item = self.validate.item(message.item)
            except MmrecError as exc:
                rejected.append(pb.RejectedItem(index=index, id=message.item.id, reason=str(exc)))
                continue
            batch[item.record.point_id] = (index, item)  # a later copy of an id wins
            if len(batch) >= UPSERT_BATCH:
                upserted += await self._flush(context, batch, rejected)
        upserted += await self._flush(context, batch, rejected)
        context.set_trailing_metadata(reader.trailer())
        return pb.UpsertItemsResponse(upserted=upserted, rejected=rejected)

    async def _flush(self, context: grpc.aio.ServicerContext,
                     batch: dict[str, tuple[int, ItemInput]], rejected: list[pb.RejectedItem]
                     ) -> int:
        """Encode and store a batch; items the engine refuses are reported, the rest stored."""
        entries = list(batch.values())
        batch.clear()
        if not entries:
            return 0
        encoded, refused = await self._run(context, self.engine.encode_each,
                                           [item for _, item in entries])
        for position, reason in refused:
            index, item = entries[position]
            rejected.append(pb.RejectedItem(index=index, id=item.record.id, reason=reason))
        await self._run(context, self.engine.store.upsert, encoded)
        self._schedule_index_build(len(encoded))
        return len(encoded)

    def _schedule_index_build(self, written: int) -> None:
        """Start a background HNSW build after every `store.optimize_after` writes.

        Items written through the service are searched by brute force until a
        build folds them into the index; the store builds without blocking reads.
        """
        self._writes_since_build += written
        if self._writes_since_build >= self.engine.config.store.optimize_after:
            self._writes_since_build = 0
            self.engine.store.optimize()

    # --------------------------------------------------------- Get and Delete
    @mapped_errors
    async def GetItems(self, request: pb.GetItemsRequest, context: grpc.aio.ServicerContext
                       ) -> pb.GetItemsResponse:
        """The items asked for, in order; NOT_FOUND names any id that does not exist."""
        scope = self._scope(request.tenant)
        ids = self.validate.ids(request.ids)
        records = await self._run(context, self.engine.get, ids, scope)
        found = {r.id for r in records}
        missing = [i for i in ids if i not in found]
        if missing:
            shown = ", ".join(repr(i) for i in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise NotFound(f"{len(missing)} unknown item id(s) in tenant "
                           f"{scope!r}: {shown}{more}")
        by_id = {r.id: r for r in records}
        return pb.GetItemsResponse(items=[convert.record_to_item(by_id[i]) for i in ids])

    @mapped_errors
    async def DeleteItems(self, request: pb.DeleteItemsRequest, context: grpc.aio.ServicerContext
                          ) -> pb.DeleteItemsResponse:
        """Delete items; unknown ids are listed, so retrying a delete is safe."""
        scope = self._scope(request.tenant)
        ids = self.validate.ids(request.ids)
        existing = {r.id for r in await self._run(context, self.engine.get, ids, scope)}
        deleted = await self._run(context, self.engine.delete, sorted(existing), scope)
        return pb.DeleteItemsResponse(deleted=deleted,
                                      missing_ids=[i for i in ids if i not in existing])

    # ---------------------------------------------------------- RecordEvents
    @mapped_errors
    async def RecordEvents(self, request_iterator: AsyncIterator[pb.Event | Malformed],
                           context: grpc.aio.ServicerContext) -> pb.RecordEventsResponse:
        """Fold a stream of events into profiles; report each refused event.

        A reader task queues the stream; each round applies whatever has arrived
        (up to ``EVENT_BATCH``), so a lone event is applied at once and a fast
        stream is applied in batches. The bounded queue pushes back on a client
        that sends faster than profiles are written.
        """
        queue: asyncio.Queue[tuple[int, pb.Event | Malformed | Unread] | None] = asyncio.Queue(
            4 * EVENT_BATCH)
        stream = StreamReader(request_iterator, self.settings.limits)

        async def read() -> None:
            try:
                async for pair in stream:
                    await queue.put(pair)
            finally:  # a broken stream ends the call; what arrived is recorded
                await queue.put(None)

        principal = caller(self.auth)
        reader = asyncio.create_task(read())
        recorded = 0
        users: set[tuple[str, str]] = set()
        rejected: list[pb.RejectedEvent] = []
        try:
            finished = False
            while not finished:
                messages = [await queue.get()]
                while not queue.empty() and len(messages) < EVENT_BATCH:
                    messages.append(queue.get_nowait())
                finished = messages[-1] is None
                batch = self._events([m for m in messages if m is not None], rejected,
                                     principal)
                if batch:
                    outcome = await self._run(context, self.engine.record_events,
                                              [event for _, event in batch])
                    recorded += outcome.recorded
                    refused = dict(outcome.rejected)
                    for position, (at, event) in enumerate(batch):
                        if position in refused:
                            rejected.append(pb.RejectedEvent(
                                index=at, user_id=event.user_id, item_id=event.item_id,
                                reason=refused[position]))
                        else:
                            users.add((event.tenant, event.user_id))
        finally:
            reader.cancel()
        rejected.sort(key=lambda r: r.index)
        context.set_trailing_metadata(stream.trailer())
        return pb.RecordEventsResponse(recorded=recorded, rejected=rejected,
                                       users_updated=len(users))

    @staticmethod
    def _events(messages: list[tuple[int, pb.Event | Malformed | Unread]],
                rejected: list[pb.RejectedEvent], principal: Principal | None
                ) -> list[tuple[int, Event]]:
        """Wire events as domain events; undecodable ones and those with a bad tenant, or one
        the caller's key does not cover, go to ``rejected``."""
        batch = []
        for index, message in messages:
            if isinstance(message, Malformed | Unread):
                rejected.append(pb.RejectedEvent(index=index, reason=str(message)))
                continue
            try:
                require_tenant(principal, tenant(message.tenant))
                batch.append((index, convert.event_from_message(message)))
            except MmrecError as exc:
                rejected.append(pb.RejectedEvent(index=index, user_id=message.user_id,
                                                 item_id=message.item_id, reason=str(exc)))
        return batch

    # -------------------------------------------------------------- Recommend
    @mapped_errors
    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
                        ) -> pb.RecommendResponse:
        """Validate a recommendation request and answer it from the user's history."""
        self._scope(request.tenant)
        query = self.validate.recommend(request, context.time_remaining())
        result = await self._run(context, self.engine.recommend, query, lane=self._lane(query))
        return convert.recommend_response(result)

    # ------------------------------------------------------------- DeleteUser
    @mapped_errors
    async def DeleteUser(self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
                         ) -> pb.DeleteUserResponse:
        """Erase a user; idempotent (a second call removes nothing and says so)."""
        scope = self._scope(request.tenant)
        erasure = await self._run(context, self.engine.delete_user,
                                  user_id(request.user_id, required=True), scope)
        return convert.erasure_response(erasure)

    # ---------------------------------------------------------------- GetInfo
    @mapped_errors
    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
                      ) -> pb.GetInfoResponse:
        """Models, channels, item count and device.

        With auth on, the count covers the key's tenants only and nothing names a path on
        the server (:func:`~engine.service.auth.tenant_view`).
        """
        principal = caller(self.auth)
        info = await self._run(context, self.engine.info)
        if principal is not None:
            count = await self._run(context, self._item_count, principal.tenants)
            kind = "qdrant server" if self.engine.config.store.url else "qdrant-edge shard"
            info = tenant_view(info, count, kind, principal.tenants)
        return convert.info_response(info)

    def _item_count(self, tenants: frozenset[str]) -> int:
        """Items stored for ``tenants``, all together."""
        return sum(self.engine.store.count(name) for name in tenants)

    def close(self) -> None:
        """Stop the worker threads (after in-flight calls finish)."""
        self.plain.close()
        self.llm.close()

