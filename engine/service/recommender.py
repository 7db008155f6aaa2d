"""The mmrec.v1.Recommender servicer: validates requests and calls the engine.

Blocking work (encoders, store) runs on a bounded thread pool so the event
loop keeps answering health checks, and every call is bounded by the
request's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc

from engine import convert
from engine.config import ServiceSettings
from engine.errors import InvalidInput, MmrecError, NotFound
from engine.images import decode_image
from engine.pipeline import Engine, ItemInput
from engine.proto.mmrec.v1 import recommender_pb2 as pb
from engine.proto.mmrec.v1 import recommender_pb2_grpc as pb_grpc
from engine.recommend import RecommendRequest
from engine.search import SearchRequest
from engine.service.status import mapped_errors
from engine.types import Event

log = logging.getLogger(__name__)

T = TypeVar("T")
UPSERT_BATCH = 64
EVENT_BATCH = 256
MAX_BUDGET_MS = 60_000
MAX_RERANK_TOP_K = 200
MAX_CANDIDATES = 10_000
MAX_ID_CHARS = 512
MAX_TENANT_CHARS = 128


class RecommenderService(pb_grpc.RecommenderServicer):
    """gRPC front of an :class:`Engine`."""

    def __init__(self, engine: Engine, settings: ServiceSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="mmrec-rpc")
        self._writes_since_build = 0

    async def _run(self, context: grpc.aio.ServicerContext, fn: Callable[..., T],
                   *args: object) -> T:
        """Run blocking engine work off the event loop, within the request's deadline."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.pool, fn, *args)
        remaining = context.time_remaining()
        return await asyncio.wait_for(future, timeout=remaining)

    # ----------------------------------------------------------------- Search
    @mapped_errors
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext
                     ) -> pb.SearchResponse:
        """Validate a search, encode the query and return the nearest items."""
        query = self._search_query(request, context.time_remaining())
        result = await self._run(context, self.engine.search, query)
        return convert.search_response(result)

    def _search_query(self, request: pb.SearchRequest, time_remaining: float | None
                      ) -> SearchRequest:
        s = self.settings
        text = request.text.strip()
        if not text and not request.image:
            raise InvalidInput("the query is empty: set `text`, `image`, or both")
        if len(request.text) > s.max_text_chars:
            raise InvalidInput(f"`text` has {len(request.text)} characters; the limit is "
                               f"{s.max_text_chars}: shorten the query")
        if request.top_k > s.max_top_k:
            raise InvalidInput(f"top_k {request.top_k} is out of range: ask for 1 to "
                               f"{s.max_top_k} results (0 means {s.default_top_k})")
        image = None
        if request.image:
            if len(request.image) > s.max_image_bytes:
                raise InvalidInput(f"`image` is {len(request.image):,} bytes; the limit is "
                                   f"{s.max_image_bytes:,}: send a smaller image")
            image = decode_image(request.image, what="`image`")
        self._check_rerank(request.rerank_budget_ms, request.rerank_top_k)
        if len(request.filter.exclude_ids) > s.max_ids_per_request:
            raise InvalidInput(f"{len(request.filter.exclude_ids)} exclude_ids; the limit is "
                               f"{s.max_ids_per_request}")
        self._check_hybrid(request.hybrid)
        hybrid = request.hybrid
        return SearchRequest(
            text=text, image=image, top_k=request.top_k or s.default_top_k,
            tenant=_tenant(request.tenant), filter=convert.item_filter(request.filter),
            explain=request.explain, explain_reason=request.explain_reason,
            rerank=request.rerank if request.HasField("rerank") else None,
            rerank_top_k=request.rerank_top_k, budget_ms=request.rerank_budget_ms,
            fusion=convert.FUSIONS[hybrid.fusion], rrf_k=hybrid.rrf_k,
            weights=dict(hybrid.channel_weights), candidates=hybrid.candidates,
            deadline=None if time_remaining is None else time.monotonic() + time_remaining)

    @staticmethod
    def _check_rerank(budget_ms: int, top_k: int) -> None:
        if budget_ms > MAX_BUDGET_MS:
            raise InvalidInput(f"rerank_budget_ms {budget_ms} is above {MAX_BUDGET_MS}; set a "
                               f"deadline-sized budget")
        if top_k > MAX_RERANK_TOP_K:
            raise InvalidInput(f"rerank_top_k {top_k} is above {MAX_RERANK_TOP_K}")

    def _check_hybrid(self, hybrid: pb.HybridParams) -> None:
        known = set(self.engine.schema.dense) | set(self.engine.schema.sparse)
        unknown = sorted(set(hybrid.channel_weights) - known)
        if unknown:
            raise InvalidInput(f"unknown channel(s) {unknown} in channel_weights; this engine "
                               f"has {sorted(known)}")
        if any(w < 0 for w in hybrid.channel_weights.values()):
            raise InvalidInput("channel weights must be >= 0 (0 switches a channel off)")
        if hybrid.candidates > MAX_CANDIDATES:
            raise InvalidInput(f"candidates {hybrid.candidates} is above {MAX_CANDIDATES}")

    # ------------------------------------------------------------ UpsertItems
    @mapped_errors
    async def UpsertItems(self, request_iterator: AsyncIterator[pb.UpsertItemsRequest],
                          context: grpc.aio.ServicerContext) -> pb.UpsertItemsResponse:
        """Store a stream of items in batches; report each invalid one and keep going.

        Reading pauses while a batch is encoded, so gRPC flow control pushes
        back on a fast client instead of buffering the stream in memory.
        """
        upserted = 0
        rejected: list[pb.RejectedItem] = []
        batch: dict[str, tuple[int, ItemInput]] = {}
        index = -1
        async for message in request_iterator:
            index += 1
            try:
                item = self._item_input(message.item)
            except MmrecError as exc:
                rejected.append(pb.RejectedItem(index=index, id=message.item.id, reason=str(exc)))
                continue
            batch[item.record.point_id] = (index, item)  # a later copy of an id wins
            if len(batch) >= UPSERT_BATCH:
                upserted += await self._flush(context, batch, rejected)
        upserted += await self._flush(context, batch, rejected)
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

    def _item_input(self, item: pb.Item) -> ItemInput:
        if not item.id.strip():
            raise InvalidInput("item has no `id`")
        if len(item.id) > MAX_ID_CHARS:
            raise InvalidInput(f"item id is {len(item.id)} characters; the limit is {MAX_ID_CHARS}")
        _tenant(item.tenant)
        image = None
        if item.image:
            if len(item.image) > self.settings.max_image_bytes:
                raise InvalidInput(f"item {item.id!r}: image is {len(item.image):,} bytes; the "
                                   f"limit is {self.settings.max_image_bytes:,}")
            image = decode_image(item.image, what=f"item {item.id!r} image")
        record = convert.item_to_record(item)
        if not record.document_text and image is None:
            raise InvalidInput(f"item {item.id!r} has no title, no text and no image")
        return ItemInput(record=record, image=image)

    # --------------------------------------------------------- Get and Delete
    @mapped_errors
    async def GetItems(self, request: pb.GetItemsRequest, context: grpc.aio.ServicerContext
                       ) -> pb.GetItemsResponse:
        """The items asked for, in order; NOT_FOUND names any id that does not exist."""
        ids = self._ids(request.ids)
        records = await self._run(context, self.engine.get, ids, _tenant(request.tenant))
        found = {r.id for r in records}
        missing = [i for i in ids if i not in found]
        if missing:
            shown = ", ".join(repr(i) for i in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise NotFound(f"{len(missing)} unknown item id(s) in tenant "
                           f"{_tenant(request.tenant)!r}: {shown}{more}")
        by_id = {r.id: r for r in records}
        return pb.GetItemsResponse(items=[convert.record_to_item(by_id[i]) for i in ids])

    @mapped_errors
    async def DeleteItems(self, request: pb.DeleteItemsRequest, context: grpc.aio.ServicerContext
                          ) -> pb.DeleteItemsResponse:
        """Delete items; unknown ids are listed, so retrying a delete is safe."""
        ids = self._ids(request.ids)
        tenant = _tenant(request.tenant)
        existing = {r.id for r in await self._run(context, self.engine.get, ids, tenant)}
        deleted = await self._run(context, self.engine.delete, sorted(existing), tenant)
        return pb.DeleteItemsResponse(deleted=deleted,
                                      missing_ids=[i for i in ids if i not in existing])

    def _ids(self, ids: list[str]) -> list[str]:
        if not ids:
            raise InvalidInput("`ids` is empty: name at least one item id")
        if len(ids) > self.settings.max_ids_per_request:
            raise InvalidInput(f"{len(ids)} ids in one request; the limit is "
                               f"{self.settings.max_ids_per_request}: split the request")
        if any(not i.strip() for i in ids):
            raise InvalidInput("`ids` contains an empty id")
        return list(dict.fromkeys(ids))

    # ---------------------------------------------------------- RecordEvents
    @mapped_errors
    async def RecordEvents(self, request_iterator: AsyncIterator[pb.Event],
                           context: grpc.aio.ServicerContext) -> pb.RecordEventsResponse:
        """Fold a stream of events into profiles; report each refused event.

        A reader task queues the stream; each round applies whatever has arrived
        (up to ``EVENT_BATCH``), so a lone event is applied at once and a fast
        stream is applied in batches. The bounded queue pushes back on a client
        that sends faster than profiles are written.
        """
        queue: asyncio.Queue[tuple[int, pb.Event] | None] = asyncio.Queue(4 * EVENT_BATCH)

        async def read() -> None:
            index = -1
            try:
                async for message in request_iterator:
                    index += 1
                    await queue.put((index, message))
            finally:  # a broken stream ends the call; what arrived is recorded
                await queue.put(None)

        reader = asyncio.create_task(read())
        recorded, users, rejected = 0, set(), []
        try:
            finished = False
            while not finished:
                messages = [await queue.get()]
                while not queue.empty() and len(messages) < EVENT_BATCH:
                    messages.append(queue.get_nowait())
                finished = messages[-1] is None
                batch = self._events([m for m in messages if m is not None], rejected)
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
        return pb.RecordEventsResponse(recorded=recorded, rejected=rejected,
                                       users_updated=len(users))

    @staticmethod
    def _events(messages: list[tuple[int, pb.Event]], rejected: list[pb.RejectedEvent]
                ) -> list[tuple[int, Event]]:
        """Wire events as domain events; those with a bad tenant go to ``rejected``."""
        batch = []
        for index, message in messages:
            try:
                _tenant(message.tenant)
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
        query = self._recommend_query(request, context.time_remaining())
        result = await self._run(context, self.engine.recommend, query)
        return convert.recommend_response(result)

    def _recommend_query(self, request: pb.RecommendRequest, time_remaining: float | None
                         ) -> RecommendRequest:
        s = self.settings
        user_id = request.user_id.strip()
        if len(user_id) > MAX_ID_CHARS:
            raise InvalidInput(f"user_id is {len(user_id)} characters; the limit is "
                               f"{MAX_ID_CHARS}")
        positives = self._example_ids(request.positive_ids, "positive_ids")
        negatives = self._example_ids(request.negative_ids, "negative_ids")
        context = request.context.strip()
        if not user_id and not positives and not context:
            raise InvalidInput("say whom or what to recommend for: set `user_id`, "
                               "`positive_ids` or `context`")
        if len(request.context) > s.max_text_chars:
            raise InvalidInput(f"`context` has {len(request.context)} characters; the limit "
                               f"is {s.max_text_chars}")
        if request.top_k > s.max_top_k:
            raise InvalidInput(f"top_k {request.top_k} is out of range: ask for 1 to "
                               f"{s.max_top_k} results (0 means {s.default_top_k})")
        self._check_rerank(request.rerank_budget_ms, request.rerank_top_k)
        if len(request.filter.exclude_ids) > s.max_ids_per_request:
            raise InvalidInput(f"{len(request.filter.exclude_ids)} exclude_ids; the limit is "
                               f"{s.max_ids_per_request}")
        self._check_hybrid(request.hybrid)
        if request.HasField("diversity") and not 0.0 <= request.diversity <= 1.0:
            raise InvalidInput(f"diversity {request.diversity} must be within [0, 1] "
                               "(1 keeps the relevance order)")
        if request.strategy not in convert.STRATEGIES:
            raise InvalidInput(f"unknown strategy {request.strategy}")
        hybrid = request.hybrid
        return RecommendRequest(
            tenant=_tenant(request.tenant), user_id=user_id,
            top_k=request.top_k or s.default_top_k, positive_ids=positives,
            negative_ids=negatives, context=context,
            filter=convert.item_filter(request.filter),
            include_seen=request.include_seen or None,
            rerank=request.rerank if request.HasField("rerank") else None,
            rerank_top_k=request.rerank_top_k, budget_ms=request.rerank_budget_ms,
            explain=request.explain, strategy=convert.STRATEGIES[request.strategy],
            fusion=convert.FUSIONS[hybrid.fusion], rrf_k=hybrid.rrf_k,
            weights=dict(hybrid.channel_weights), candidates=hybrid.candidates,
            diversity=request.diversity if request.HasField("diversity") else None,
            deadline=None if time_remaining is None else time.monotonic() + time_remaining)

    def _example_ids(self, ids: list[str], field: str) -> tuple[str, ...]:
        if len(ids) > self.settings.max_ids_per_request:
            raise InvalidInput(f"{len(ids)} {field}; the limit is "
                               f"{self.settings.max_ids_per_request}")
        if any(not i.strip() or len(i) > MAX_ID_CHARS for i in ids):
            raise InvalidInput(f"`{field}` contains an empty or over-long id")
        return tuple(dict.fromkeys(i.strip() for i in ids))

    # ------------------------------------------------------------- DeleteUser
    @mapped_errors
    async def DeleteUser(self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
                         ) -> pb.DeleteUserResponse:
        """Erase a user; idempotent (a second call removes nothing and says so)."""
        user_id = request.user_id.strip()
        if not user_id:
            raise InvalidInput("`user_id` is empty: name the user to erase")
        if len(user_id) > MAX_ID_CHARS:
            raise InvalidInput(f"user_id is {len(user_id)} characters; the limit is "
                               f"{MAX_ID_CHARS}")
        erasure = await self._run(context, self.engine.delete_user, user_id,
                                  _tenant(request.tenant))
        return convert.erasure_response(erasure)

    # ---------------------------------------------------------------- GetInfo
    @mapped_errors
    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
                      ) -> pb.GetInfoResponse:
        """Models, channels, item count and device."""
        info = await self._run(context, self.engine.info)
        return convert.info_response(info)

    def close(self) -> None:
        """Stop the worker threads (after in-flight calls finish)."""
        self.pool.shutdown(wait=True)


def _tenant(value: str) -> str:
    if len(value) > MAX_TENANT_CHARS:
        raise InvalidInput(f"tenant is {len(value)} characters; the limit is {MAX_TENANT_CHARS}")
    return convert.tenant_of(value)
