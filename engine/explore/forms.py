"""The page's JSON requests read into the client's keyword arguments, strictly typed.

The service validates every request (limits, channel names, filter sizes); this module only
makes sure each value has the type the client's keyword expects, so a malformed body is a
readable ``InvalidInput`` (HTTP 400) and never a ``TypeError`` deep in protobuf (a 500).
Filters arrive as ``{"any": {key: [values]}, "ranges": {key: {"gte": n, "lte": n}}}``:
values of one key are alternatives (MatchAny), keys and ranges must all hold.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from engine.domain import Condition, InvalidInput, ItemFilter, MatchAny, Range

MAX_IMAGE_BYTES = 16 * 1024 * 1024
"""The largest uploaded query image the explorer forwards (the service's limit is lower)."""
KNOBS = ("top_k", "rrf_k", "candidates", "rerank_top_k", "budget_ms")


def text(body: dict[str, Any], key: str, default: str = "") -> str:
    """A string field, "" or ``default`` when absent."""
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be text, not {type(value).__name__}")
    return value.strip()


def integer(body: dict[str, Any], key: str) -> int:
    """A whole, non-negative number field; 0 (the server's default) when absent."""
    value = body.get(key, 0)
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidInput(f"{key} must be a whole number, not {value!r}")
    if value < 0:
        raise InvalidInput(f"{key} must not be negative, not {value}")
    return int(value)


def flag(body: dict[str, Any], key: str) -> bool:
    """A true/false field; false when absent."""
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{key} must be true or false, not {value!r}")
    return value


def number(value: Any, what: str) -> float:
    """A finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number, not {value!r}")
    return float(value)


def weights(body: dict[str, Any]) -> dict[str, float] | None:
    """Channel weights ``{channel: weight}``; None (the server's) when absent or empty."""
    value = body.get("weights") or {}
    if not isinstance(value, dict):
        raise InvalidInput("weights must map channel names to numbers")
    return {str(k): number(v, f"the weight of {k}") for k, v in value.items()} or None


def item_filter(body: dict[str, Any]) -> ItemFilter | None:
    """The page's filter as an ``ItemFilter``; None when it asks for nothing."""
    value = body.get("filter") or {}
    if not isinstance(value, dict):
        raise InvalidInput("filter must be an object with 'any' and 'ranges'")
    must: list[Condition] = []
    chips = value.get("any") or {}
    if not isinstance(chips, dict):
        raise InvalidInput("filter.any must map attribute names to lists of values")
    for key, values in chips.items():
        if not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
            raise InvalidInput(f"filter.any.{key} must be a list of values")
        if values:
            must.append(MatchAny(str(key), tuple(values)))
    ranges = value.get("ranges") or {}
    if not isinstance(ranges, dict):
        raise InvalidInput("filter.ranges must map attribute names to {gte, lte}")
    for key, bounds in ranges.items():
        if not isinstance(bounds, dict):
            raise InvalidInput(f"filter.ranges.{key} must be an object with gte and lte")
        gte, lte = bounds.get("gte"), bounds.get("lte")
        if gte is None and lte is None:
            continue
        must.append(Range(str(key),
                          gte=None if gte is None else number(gte, f"{key} from"),
                          lte=None if lte is None else number(lte, f"{key} to")))
    return ItemFilter(must=tuple(must)) if must else None


def image(body: dict[str, Any]) -> bytes | None:
    """The uploaded query image (base64 in ``image``), or None."""
    value = text(body, "image")
    if not value:
        return None
    if "," in value and value.startswith("data:"):  # a data: URL from FileReader
        value = value.split(",", 1)[1]
    if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidInput(f"the image is above the explorer's {MAX_IMAGE_BYTES:,} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"the image is not valid base64: {exc}") from exc


def shared(body: dict[str, Any]) -> dict[str, Any]:
    """The knobs Search and Recommend share, as the client's keyword arguments."""
    fusion = text(body, "fusion")
    if fusion not in ("", "rrf", "dbsf"):
        raise InvalidInput(f"fusion must be rrf or dbsf, not {fusion!r}")
    rerank = body.get("rerank")
    if rerank is not None and not isinstance(rerank, bool):
        raise InvalidInput(f"rerank must be true, false or null, not {rerank!r}")
    return {
        **{knob: integer(body, knob) for knob in KNOBS},
        "tenant": text(body, "tenant"),
        "filter": item_filter(body),
        "fusion": fusion or None,
        "weights": weights(body),
        "explain": True,
        "explain_reason": flag(body, "explain_reason"),
        "rerank": rerank,
    }
