"""The client's domain answers as the JSON the page draws: results, explanations, info.

Only ``engine.domain`` types come in (the explorer never sees protobuf); everything that goes
out is plain JSON: strings, numbers, lists, objects. Item text is sent as text and the page
puts it into the DOM as text, so a catalog cannot inject markup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from engine.domain import (
    EngineInfo,
    Erasure,
    Explanation,
    ItemRecord,
    RecommendResult,
    SearchHit,
    SearchResult,
)
from engine.explore.history import LoggedEvent


def json_safe(value: Any) -> Any:
    """An attribute value as JSON: numbers, text, lists and objects; anything else as text."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    return str(value)


def thumbnail_url(record: ItemRecord) -> str:
    """The explorer's thumbnail address of an item (never the item's own image reference)."""
    return "/api/thumb?" + urlencode({"tenant": record.tenant, "id": record.id})


def item(record: ItemRecord) -> dict[str, Any]:
    """An item as the page shows it."""
    return {"id": record.id, "tenant": record.tenant, "title": record.title,
            "text": record.text, "attributes": json_safe(dict(record.attributes)),
            "thumb": thumbnail_url(record)}


def explanation(e: Explanation) -> dict[str, Any]:
    """Per-channel standing, fused and LLM standing, matched words and the reason."""
    titles = [*e.because_of_titles, *[""] * (len(e.because_of) - len(e.because_of_titles))]
    return {
        "rank": e.rank, "fused_rank": e.fused_rank, "fused_score": json_safe(e.fused_score),
        "channels": [{"name": name, "rank": c.rank, "score": json_safe(c.score)}
                     for name, c in e.channels.items()],
        "rerank_score": json_safe(e.rerank_score),
        "matched_terms": list(e.matched_terms),
        "reason": e.reason, "reason_source": e.reason_source,
        "reason_rejected": e.reason_rejected,
        "because_of": [{"id": i, "title": t} for i, t in zip(e.because_of, titles, strict=True)],
        "shared_attributes": list(e.shared_attributes),
    }


def _hits(hits: list[SearchHit], explanations: list[Explanation] | None) -> list[dict[str, Any]]:
    """Each hit with its score and, when the service explained it, its explanation."""
    out = []
    for index, hit in enumerate(hits):
        entry = item(hit.record) | {"score": json_safe(hit.score)}
        if explanations is not None and index < len(explanations):
            entry["explanation"] = explanation(explanations[index])
        out.append(entry)
    return out


def search_result(result: SearchResult, round_trip_ms: float) -> dict[str, Any]:
    """A search answer, with the server's stage timings and the explorer's round trip."""
    return {
        "hits": _hits(result.hits, result.explanations),
        "channels": list(result.channels), "fusion": result.fusion,
        "reranked": result.reranked, "budget_exhausted": result.budget_exhausted,
        "stage_ms": dict(result.stage_ms), "round_trip_ms": round(round_trip_ms, 2),
    }


def recommend_result(result: RecommendResult, round_trip_ms: float) -> dict[str, Any]:
    """A recommend answer: as a search answer, plus the strategy and whether it was cold."""
    return {
        "hits": _hits(result.hits, result.explanations),
        "channels": list(result.channels), "fusion": result.fusion,
        "strategy": result.strategy, "cold_start": result.cold_start,
        "reranked": result.reranked, "budget_exhausted": result.budget_exhausted,
        "stage_ms": dict(result.stage_ms), "round_trip_ms": round(round_trip_ms, 2),
    }


def events(logged: list[LoggedEvent]) -> list[dict[str, Any]]:
    """Recorded events, newest first, with titles."""
    return [{"item_id": e.item_id, "title": e.title, "kind": e.kind, "timestamp": e.timestamp}
            for e in logged]


def erasure(erased: Erasure, logged: list[LoggedEvent]) -> dict[str, Any]:
    """What DeleteUser removed, and the events this explorer had recorded for the user."""
    return {"events": erased.events, "seen": erased.seen, "profile": erased.profile,
            "cache_entries": erased.cache_entries, "recorded_here": events(logged)}


def info(details: EngineInfo) -> dict[str, Any]:
    """GetInfo: version, device, store, item count, every model and channel."""
    return {
        "version": details.version, "device": details.device, "store": details.store,
        "item_count": details.item_count,
        "models": [{"role": m.role, "name": m.name, "loaded": m.loaded, "reason": m.reason,
                    "details": dict(m.details)} for m in details.models],
        "channels": [{"name": c.name, "dim": c.dim, "weight": json_safe(c.weight),
                      "enabled": c.enabled} for c in details.channels],
    }
