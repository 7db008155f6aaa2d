"""Every RPC's input checks, written once: wire messages in, validated domain requests out.

A client's mistake becomes :class:`engine.domain.InvalidInput` with a message a
person can act on (the status mapping turns it into INVALID_ARGUMENT). Search
and Recommend share most knobs (top k, filter, re-rank budget, hybrid
parameters); :meth:`RequestValidator.shared` checks them for both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from typing import Any

from google.protobuf import struct_pb2

from engine.config import ServiceSettings
from engine.domain import (
    MAX_ID_CHARS,
    MAX_TENANT_CHARS,
    InvalidInput,
    ItemInput,
    RecommendRequest,
    SearchRequest,
)
from engine.encoders.images import decode_image
from engine.service import convert
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb

MAX_CANDIDATES = 10_000


def tenant(value: str) -> str:
    """The tenant a request names (empty: the default tenant), within its length limit."""
    if len(value) > MAX_TENANT_CHARS:
        raise InvalidInput(f"tenant is {len(value)} characters; the limit is {MAX_TENANT_CHARS}")
    return convert.tenant_of(value)


def check_finite(attributes: struct_pb2.Struct, what: str) -> None:
    """InvalidInput naming the first NaN or infinite number in ``attributes`` by its path."""
    stack: list[tuple[str, struct_pb2.Value]] = [
        (key, value) for key, value in attributes.fields.items()]
    while stack:
        path, value = stack.pop()
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            raise InvalidInput(f"{what}: attribute {path!r} is {value.number_value}; attribute "
                               "numbers must be finite (send a string or leave it out)")
        if kind == "struct_value":
            stack += [(f"{path}.{k}", v) for k, v in value.struct_value.fields.items()]
        elif kind == "list_value":
            stack += [(f"{path}[{i}]", v) for i, v in enumerate(value.list_value.values)]


def user_id(value: str, *, required: bool) -> str:
    """A stripped user id within its length limit; empty only when not ``required``."""
    stripped = value.strip()
    if required and not stripped:
        raise InvalidInput("`user_id` is empty: name the user")
    if len(stripped) > MAX_ID_CHARS:
        raise InvalidInput(f"user_id is {len(stripped)} characters; the limit is {MAX_ID_CHARS}")
    return stripped


class RequestValidator:
    """Checks requests against the service limits and the engine's channels."""

    def __init__(self, settings: ServiceSettings, channels: Collection[str]) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.channels = frozenset(channels)

    # -- the knobs Search and Recommend share -------------------------------------------------

    def shared(self, request: pb.SearchRequest | pb.RecommendRequest,
               time_remaining: float | None) -> dict[str, Any]:
        """The checked knobs both requests have, as keyword arguments of either domain request."""
        s, lim = self.settings, self.limits
        if request.top_k > lim.max_top_k:
            raise InvalidInput(f"top_k {request.top_k} is out of range: ask for 1 to "
                               f"{lim.max_top_k} results (0 means {s.default_top_k})")
        if request.rerank_budget_ms > lim.max_rerank_budget_ms:
            raise InvalidInput(f"rerank_budget_ms {request.rerank_budget_ms} is above this "
                               f"server's limit of {lim.max_rerank_budget_ms}; ask for less")
        if request.rerank_top_k > lim.max_rerank_top_k:
            raise InvalidInput(f"rerank_top_k {request.rerank_top_k} is above this server's "
                               f"limit of {lim.max_rerank_top_k}")
        self._filter_size(request.filter)
        hybrid = self._hybrid(request.hybrid)
        return dict(
            tenant=tenant(request.tenant), top_k=request.top_k or s.default_top_k,
            filter=convert.item_filter(request.filter),
            rerank=request.rerank if request.HasField("rerank") else None,
            rerank_top_k=request.rerank_top_k, budget_ms=request.rerank_budget_ms,
            deadline=None if time_remaining is None else time.monotonic() + time_remaining,
            **hybrid)

    def _filter_size(self, message: pb.Filter) -> None:
        """InvalidInput when a filter is larger than the limits (checked before it is read)."""
        lim = self.limits
        conditions = len(message.must) + len(message.must_not)
        if conditions > lim.max_filter_conditions:
            raise InvalidInput(f"the filter has {conditions} conditions; the limit is "
                               f"{lim.max_filter_conditions}: use `any_of` for a set of values")
        for condition in (*message.must, *message.must_not):
            if len(condition.any_of.values) > lim.max_filter_values:
                raise InvalidInput(f"filter on {condition.key!r}: {len(condition.any_of.values)}"
                                   f" values in `any_of`; the limit is {lim.max_filter_values}")
        if len(message.exclude_ids) > lim.max_ids_per_request:
            raise InvalidInput(f"{len(message.exclude_ids)} exclude_ids; the limit is "
                               f"{lim.max_ids_per_request}")

    def _hybrid(self, hybrid: pb.HybridParams) -> dict[str, Any]:
        unknown = sorted(set(hybrid.channel_weights) - self.channels)
        if unknown:
            hint = ("; a user's profile vector is searched through the content channel 'fused'"
                    if "profile" in unknown else "")
            raise InvalidInput(f"unknown channel(s) {unknown} in channel_weights; this engine "
                               f"has {sorted(self.channels)}{hint}")
        bad = {k: w for k, w in hybrid.channel_weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise InvalidInput(f"channel weights must be finite numbers >= 0 (0 switches a "
                               f"channel off); got {bad}")
        if hybrid.candidates > MAX_CANDIDATES:
            raise InvalidInput(f"candidates {hybrid.candidates} is above {MAX_CANDIDATES}")
        if hybrid.fusion not in convert.FUSIONS:
            names = ", ".join(pb.Fusion.Name(f) for f in convert.FUSIONS)
            raise InvalidInput(f"unknown fusion {hybrid.fusion}; use one of {names}")
        return dict(fusion=convert.FUSIONS[hybrid.fusion], rrf_k=hybrid.rrf_k,
                    weights=dict(hybrid.channel_weights), candidates=hybrid.candidates)

    def _text(self, value: str, name: str) -> str:
        if len(value) > self.limits.max_text_chars:
            raise InvalidInput(f"`{name}` has {len(value)} characters; the limit is "
                               f"{self.limits.max_text_chars}: shorten it")
        return value.strip()

    # -- one method per request ---------------------------------------------------------------

    def search(self, request: pb.SearchRequest, time_remaining: float | None) -> SearchRequest:
        """A checked search: text and/or an image within the limits, and the shared knobs."""
        text = self._text(request.text, "text")
        if not text and not request.image:
            raise InvalidInput("the query is empty: set `text`, `image`, or both")
        image = None
        if request.image:
            if len(request.image) > self.limits.max_image_bytes:
                raise InvalidInput(f"`image` is {len(request.image):,} bytes; the limit is "
                                   f"{self.limits.max_image_bytes:,}: send a smaller image")
            image = decode_image(request.image, what="`image`",
                                 max_pixels=self.limits.max_image_pixels)
        return SearchRequest(text=text, image=image, explain=request.explain,
                             explain_reason=request.explain_reason,
                             **self.shared(request, time_remaining))

    def recommend(self, request: pb.RecommendRequest, time_remaining: float | None
                  ) -> RecommendRequest:
        """A checked recommendation: whom or what for, the examples, and the shared knobs."""
        user = user_id(request.user_id, required=False)
        positives = self.example_ids(request.positive_ids, "positive_ids")
        negatives = self.example_ids(request.negative_ids, "negative_ids")
        context = self._text(request.context, "context")
        if not user and not positives and not context:
            raise InvalidInput("say whom or what to recommend for: set `user_id`, "
                               "`positive_ids` or `context`")
        if request.HasField("diversity") and not 0.0 <= request.diversity <= 1.0:
            raise InvalidInput(f"diversity {request.diversity} must be within [0, 1] "
                               "(1 keeps the relevance order)")
        if request.strategy not in convert.STRATEGIES:
            raise InvalidInput(f"unknown strategy {request.strategy}")
        return RecommendRequest(
            user_id=user, positive_ids=positives, negative_ids=negatives, context=context,
            include_seen=request.include_seen or None, explain=request.explain,
            explain_reason=request.explain and request.explain_reason,
            strategy=convert.STRATEGIES[request.strategy],
            diversity=request.diversity if request.HasField("diversity") else None,
            **self.shared(request, time_remaining))

    def example_ids(self, ids: Sequence[str], field: str) -> tuple[str, ...]:
        """Positive or negative example ids: within the count limit, none empty or over-long."""
        if len(ids) > self.limits.max_ids_per_request:
            raise InvalidInput(f"{len(ids)} {field}; the limit is "
                               f"{self.limits.max_ids_per_request}")
        if any(not i.strip() or len(i) > MAX_ID_CHARS for i in ids):
            raise InvalidInput(f"`{field}` contains an empty or over-long id")
        return tuple(dict.fromkeys(i.strip() for i in ids))

    def ids(self, ids: Sequence[str]) -> list[str]:
        """Item ids to get or delete: at least one, within the limit, none empty."""
        if not ids:
            raise InvalidInput("`ids` is empty: name at least one item id")
        if len(ids) > self.limits.max_ids_per_request:
            raise InvalidInput(f"{len(ids)} ids in one request; the limit is "
                               f"{self.limits.max_ids_per_request}: split the request")
        if any(not i.strip() for i in ids):
            raise InvalidInput("`ids` contains an empty id")
        return list(dict.fromkeys(i.strip() for i in ids))  # stripped, as items and events are

    def item(self, item: pb.Item) -> ItemInput:
        """An item to index: an id (stripped, as everywhere), a tenant, finite attribute
        numbers, and text or an image that decodes."""
        if not item.id.strip():
            raise InvalidInput("item has no `id`")
        if len(item.id.strip()) > MAX_ID_CHARS:
            raise InvalidInput(f"item id is {len(item.id.strip())} characters; the limit is "
                               f"{MAX_ID_CHARS}")
        tenant(item.tenant)
        if item.HasField("attributes"):
            check_finite(item.attributes, f"item {item.id.strip()!r}")
        image = None
        if item.image:
            if len(item.image) > self.limits.max_image_bytes:
                raise InvalidInput(f"item {item.id!r}: image is {len(item.image):,} bytes; the "
                                   f"limit is {self.limits.max_image_bytes:,}")
            image = decode_image(item.image, what=f"item {item.id!r} image",
                                 max_pixels=self.limits.max_image_pixels)
        record = convert.item_to_record(item)
        if not record.document_text and image is None:
            raise InvalidInput(f"item {item.id!r} has no title, no text and no image")
        return ItemInput(record=record, image=image)
