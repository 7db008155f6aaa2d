"""The one place where protobuf messages become domain types and back.

The service and the client both go through here, so proto types never reach
the pipeline and domain types never reach the wire unconverted. Every
conversion has its inverse beside it (the service reads what the client writes
and the client reads what the service writes): ``item_filter`` /
``filter_to_message``, ``search_response`` / ``search_result_from_response``,
``recommend_response`` / ``recommend_result_from_response``, ``erasure_response`` /
``erasure_from_response``, ``info_response`` / ``info_from_response``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from engine.domain import (
    DEFAULT_TENANT,
    ChannelHit,
    ChannelStatus,
    Condition,
    EngineInfo,
    Erasure,
    Event,
    Explanation,
    Fusion,
    InvalidInput,
    ItemFilter,
    ItemRecord,
    Match,
    MatchAny,
    ModelStatus,
    Range,
    RecommendResult,
    SearchHit,
    SearchResult,
)
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb


def tenant_of(value: str) -> str:
    """The tenant a request names; empty means the default tenant."""
    return value or DEFAULT_TENANT


def attributes_to_struct(attributes: dict[str, Any] | Any) -> struct_pb2.Struct:
    """A JSON-like mapping as a protobuf Struct."""
    struct = struct_pb2.Struct()
    if attributes:
        struct.update(dict(attributes))
    return struct


def _json_numbers(value: Any) -> Any:
    """Struct holds every number as a double; give whole numbers back as ints (JSON semantics)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_numbers(v) for v in value]
    return value


def item_to_record(item: pb.Item) -> ItemRecord:
    """A wire Item as an ItemRecord (the image bytes are handled separately)."""
    attributes = (_json_numbers(json_format.MessageToDict(item.attributes))
                  if item.HasField("attributes") else {})
    return ItemRecord(
        id=item.id.strip(),  # as events, GetItems and DeleteItems strip it
        tenant=tenant_of(item.tenant),
        title=item.title,
        text=item.text,
        image_uri=item.image_uri,
        attributes=attributes,
    )


def record_to_item(record: ItemRecord) -> pb.Item:
    """A stored record as a wire Item (never with image bytes)."""
    item = pb.Item(id=record.id, tenant=record.tenant, title=record.title, text=record.text,
                   image_uri=record.image_uri)
    if record.attributes:
        item.attributes.CopyFrom(attributes_to_struct(record.attributes))
    return item


def _explanation(e: Explanation) -> pb.Explanation:
    message = pb.Explanation(rank=e.rank, fused_rank=e.fused_rank, fused_score=e.fused_score,
                             matched_terms=e.matched_terms, reason=e.reason,
                             because_of=e.because_of, because_of_titles=e.because_of_titles,
                             shared_attributes=e.shared_attributes,
                             reason_source=e.reason_source, reason_rejected=e.reason_rejected)
    for name, hit in e.channels.items():
        message.channels[name].CopyFrom(pb.ChannelScore(rank=hit.rank, score=hit.score))
    if e.rerank_score is not None:
        message.rerank_score = e.rerank_score
    return message


def _scored_items(hits: list[SearchHit], explanations: list[Explanation] | None
                  ) -> list[pb.ScoredItem]:
    """Hits (and their explanations, when asked) as wire ScoredItems."""
    results = []
    for i, hit in enumerate(hits):
        scored = pb.ScoredItem(id=hit.record.id, score=hit.score, item=record_to_item(hit.record))
        if explanations is not None:
            scored.explanation.CopyFrom(_explanation(explanations[i]))
        results.append(scored)
    return results


def search_response(result: SearchResult) -> pb.SearchResponse:
    """A SearchResult on the wire."""
    results = _scored_items(result.hits, result.explanations)
    return pb.SearchResponse(results=results, channels=result.channels,
                             reranked=result.reranked,
                             rerank_budget_exhausted=result.budget_exhausted,
                             fusion=result.fusion, stage_ms=dict(result.stage_ms))


def search_result_from_response(response: pb.SearchResponse) -> SearchResult:
    """A SearchResponse as a SearchResult (client side; the inverse of :func:`search_response`)."""
    return SearchResult(hits=hits_from_response(response), channels=list(response.channels),
                        fusion=response.fusion, reranked=response.reranked,
                        budget_exhausted=response.rerank_budget_exhausted,
                        explanations=explanations_from_response(response),
                        stage_ms=dict(response.stage_ms))


FUSIONS: dict[pb.Fusion, Fusion | None] = {pb.FUSION_UNSPECIFIED: None, pb.FUSION_RRF: "rrf",
                                            pb.FUSION_DBSF: "dbsf"}


MAX_EXACT_INT = 2**53
"""Integers beyond this are not exact in the double a protobuf Value carries."""


def _scalar(value: struct_pb2.Value, key: str) -> str | int | bool:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value" and float(value.number_value).is_integer():
        if abs(value.number_value) > MAX_EXACT_INT:
            raise InvalidInput(f"filter on {key!r}: {value.number_value:g} is beyond +-2^53, "
                               "where a protobuf number stops being an exact integer; "
                               "store such ids as strings and match them as strings")
        return int(value.number_value)
    raise InvalidInput(f"filter on {key!r}: equality needs a string, an integer or a bool; "
                       "use `range` for other numbers")


def _condition(condition: pb.Condition) -> Condition:
    key = condition.key.strip()
    if not key or len(key) > 128:
        raise InvalidInput("a filter condition needs a `key` (an attribute name, <= 128 chars)")
    test = condition.WhichOneof("test")
    if test == "equals":
        return Match(key, _scalar(condition.equals, key))
    if test == "any_of":
        values = tuple(_scalar(v, key) for v in condition.any_of.values)
        if not values:
            raise InvalidInput(f"filter on {key!r}: `any_of` is empty")
        return MatchAny(key, values)
    if test == "range":
        r = condition.range
        bounds = {b: getattr(r, b) if r.HasField(b) else None for b in ("gte", "gt", "lte", "lt")}
        if all(v is None for v in bounds.values()):
            raise InvalidInput(f"filter on {key!r}: `range` needs at least one bound")
        bad = {b: v for b, v in bounds.items() if v is not None and not math.isfinite(v)}
        if bad:
            raise InvalidInput(f"filter on {key!r}: range bounds must be finite numbers, not "
                               f"{bad}; leave a side unset for no limit")
        return Range(key, **bounds)
    raise InvalidInput(f"filter on {key!r}: set one of `equals`, `any_of` or `range`")


def item_filter(message: pb.Filter) -> ItemFilter:
    """A wire Filter as an ItemFilter, or InvalidInput saying which condition is wrong."""
    return ItemFilter(must=tuple(_condition(c) for c in message.must),
                      must_not=tuple(_condition(c) for c in message.must_not),
                      exclude_ids=tuple(i.strip() for i in message.exclude_ids))


def _value(value: str | int | bool) -> struct_pb2.Value:
    """An equality value on the wire (the inverse of ``_scalar``; bool before int)."""
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    return struct_pb2.Value(number_value=float(value))


def _condition_message(condition: Condition) -> pb.Condition:
    """One domain condition on the wire (the inverse of ``_condition``)."""
    if isinstance(condition, Match):
        return pb.Condition(key=condition.key, equals=_value(condition.value))
    if isinstance(condition, MatchAny):
        values = pb.ValueList(values=[_value(v) for v in condition.values])
        return pb.Condition(key=condition.key, any_of=values)
    bounds = {b: getattr(condition, b) for b in ("gte", "gt", "lte", "lt")}
    return pb.Condition(key=condition.key, range=pb.NumericRange(
        **{b: v for b, v in bounds.items() if v is not None}))


def filter_to_message(filter_: ItemFilter) -> pb.Filter:
    """An ItemFilter on the wire (client side; the inverse of :func:`item_filter`)."""
    return pb.Filter(must=[_condition_message(c) for c in filter_.must],
                     must_not=[_condition_message(c) for c in filter_.must_not],
                     exclude_ids=list(filter_.exclude_ids))


def fusion_to_message(fusion: Fusion | None) -> pb.Fusion:
    """A fusion name ("rrf", "dbsf"; None: the server's default) as the wire enum."""
    by_name = {name: number for number, name in FUSIONS.items()}
    if fusion not in by_name:
        raise InvalidInput(f"unknown fusion {fusion!r}; use 'rrf' or 'dbsf' (None: the "
                           "server's default)")
    return by_name[fusion]


def hybrid_to_message(*, fusion: Fusion | None = None, rrf_k: int = 0,
                      weights: Mapping[str, float] | None = None,
                      candidates: int = 0) -> pb.HybridParams:
    """Channel fusion settings on the wire (client side); zero or None keeps a server default.

    The service reads them back with ``FUSIONS``, ``rrf_k``, ``channel_weights`` and
    ``candidates`` (``RequestValidator.shared``).
    """
    return pb.HybridParams(fusion=fusion_to_message(fusion), rrf_k=rrf_k,
                           channel_weights=dict(weights or {}), candidates=candidates)


def hits_from_response(response: pb.SearchResponse | pb.RecommendResponse) -> list[SearchHit]:
    """The hits of a Search or Recommend response as domain objects (client side)."""
    return [SearchHit(record=item_to_record(r.item) if r.HasField("item") else ItemRecord(id=r.id),
                      score=r.score) for r in response.results]


def explanations_from_response(response: pb.SearchResponse | pb.RecommendResponse
                               ) -> list[Explanation] | None:
    """The explanations of a response (client side), or None when none were asked for."""
    if not any(r.HasField("explanation") for r in response.results):
        return None
    return [Explanation(
        rank=e.rank, fused_rank=e.fused_rank, fused_score=e.fused_score,
        channels={name: ChannelHit(c.rank, c.score) for name, c in e.channels.items()},
        rerank_score=e.rerank_score if e.HasField("rerank_score") else None,
        matched_terms=list(e.matched_terms), reason=e.reason, because_of=list(e.because_of),
        because_of_titles=list(e.because_of_titles), shared_attributes=list(e.shared_attributes),
        reason_source=e.reason_source, reason_rejected=e.reason_rejected)
        for e in (r.explanation for r in response.results)]


def info_response(info: EngineInfo) -> pb.GetInfoResponse:
    """EngineInfo on the wire."""
    return pb.GetInfoResponse(
        version=info.version,
        device=info.device,
        store=info.store,
        item_count=info.item_count,
        models=[pb.ModelInfo(role=m.role, name=m.name, loaded=m.loaded, reason=m.reason,
                             details=m.details) for m in info.models],
        channels=[pb.ChannelInfo(name=c.name, dim=c.dim, weight=c.weight, enabled=c.enabled)
                  for c in info.channels],
    )


def info_from_response(response: pb.GetInfoResponse) -> EngineInfo:
    """A GetInfoResponse as EngineInfo (client side)."""
    return EngineInfo(
        version=response.version,
        device=response.device,
        store=response.store,
        item_count=response.item_count,
        models=[ModelStatus(m.role, m.name, m.loaded, m.reason, dict(m.details))
                for m in response.models],
        channels=[ChannelStatus(c.name, c.dim, c.weight, c.enabled) for c in response.channels],
    )


STRATEGIES: dict[pb.RecommendStrategy, str | None] = {
    pb.RECOMMEND_STRATEGY_UNSPECIFIED: None, pb.RECOMMEND_STRATEGY_PROFILE: "profile",
    pb.RECOMMEND_STRATEGY_AVERAGE_VECTOR: "average_vector",
    pb.RECOMMEND_STRATEGY_BEST_SCORE: "best_score", pb.RECOMMEND_STRATEGY_SUM_SCORES: "sum_scores"}


def strategy_to_message(strategy: str | None) -> pb.RecommendStrategy:
    """A strategy name (None or empty: the server's default) as the wire enum."""
    by_name = {name: number for number, name in STRATEGIES.items()}
    if (strategy or None) not in by_name:
        names = ", ".join(repr(n) for n in by_name if n)
        raise InvalidInput(f"unknown strategy {strategy!r}; use one of {names}")
    return by_name[strategy or None]


def event_from_message(message: pb.Event) -> Event:
    """A wire Event as a domain Event (validated by the profiles layer)."""
    return Event(user_id=message.user_id.strip(), item_id=message.item_id.strip(),
                 kind=message.kind.strip().lower(), value=message.value,
                 timestamp=message.timestamp, tenant=tenant_of(message.tenant))


def event_to_message(event: Event) -> pb.Event:
    """A domain Event on the wire (client side)."""
    return pb.Event(user_id=event.user_id, item_id=event.item_id, kind=event.kind,
                    value=event.value, timestamp=event.timestamp, tenant=event.tenant)


def recommend_response(result: RecommendResult) -> pb.RecommendResponse:
    """A RecommendResult on the wire."""
    return pb.RecommendResponse(results=_scored_items(result.hits, result.explanations),
                                channels=result.channels, reranked=result.reranked,
                                rerank_budget_exhausted=result.budget_exhausted,
                                fusion=result.fusion, cold_start=result.cold_start,
                                strategy=result.strategy, stage_ms=dict(result.stage_ms))


def recommend_result_from_response(response: pb.RecommendResponse) -> RecommendResult:
    """A RecommendResponse as a RecommendResult (client side; the inverse of
    :func:`recommend_response`)."""
    return RecommendResult(hits=hits_from_response(response), channels=list(response.channels),
                           fusion=response.fusion, strategy=response.strategy,
                           cold_start=response.cold_start, reranked=response.reranked,
                           budget_exhausted=response.rerank_budget_exhausted,
                           explanations=explanations_from_response(response),
                           stage_ms=dict(response.stage_ms))


def erasure_response(erasure: Erasure) -> pb.DeleteUserResponse:
    """What DeleteUser removed, on the wire."""
    return pb.DeleteUserResponse(events_deleted=erasure.events, seen_deleted=erasure.seen,
                                 profile_deleted=erasure.profile,
                                 cache_entries_deleted=erasure.cache_entries)


def erasure_from_response(response: pb.DeleteUserResponse) -> Erasure:
    """What DeleteUser removed, as an Erasure (client side; the inverse of
    :func:`erasure_response`)."""
    return Erasure(events=response.events_deleted, seen=response.seen_deleted,
                   profile=response.profile_deleted,
                   cache_entries=response.cache_entries_deleted)
