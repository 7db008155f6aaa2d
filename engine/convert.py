"""The one place where protobuf messages become domain types and back.

The service and the client both go through here, so proto types never reach
the pipeline and domain types never reach the wire unconverted.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from engine.proto.mmrec.v1 import recommender_pb2 as pb
from engine.types import (
    DEFAULT_TENANT,
    ChannelStatus,
    EngineInfo,
    ItemRecord,
    ModelStatus,
    SearchHit,
    SearchResult,
)


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
        id=item.id,
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


def search_response(result: SearchResult) -> pb.SearchResponse:
    """A SearchResult on the wire."""
    return pb.SearchResponse(
        results=[pb.ScoredItem(id=h.record.id, score=h.score, item=record_to_item(h.record))
                 for h in result.hits],
        channels=result.channels,
    )


def hits_from_response(response: pb.SearchResponse) -> list[SearchHit]:
    """The hits of a SearchResponse as domain objects (client side)."""
    return [SearchHit(record=item_to_record(r.item) if r.HasField("item") else ItemRecord(id=r.id),
                      score=r.score) for r in response.results]


def info_response(info: EngineInfo) -> pb.GetInfoResponse:
    """EngineInfo on the wire."""
    return pb.GetInfoResponse(
        version=info.version,
        device=info.device,
        store=info.store,
        item_count=info.item_count,
        models=[pb.ModelInfo(role=m.role, name=m.name, loaded=m.loaded, reason=m.reason)
                for m in info.models],
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
        models=[ModelStatus(m.role, m.name, m.loaded, m.reason) for m in response.models],
        channels=[ChannelStatus(c.name, c.dim, c.weight, c.enabled) for c in response.channels],
    )
