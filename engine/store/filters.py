"""Payload filters: validation of an ``ItemFilter`` into a backend-neutral :class:`FilterPlan`.

Attribute keys name item attributes (``genres``, ``year``); the payload keeps
them under ``attributes``, so a key becomes the path ``attributes.<key>`` (dots
reach into nested attributes). Qdrant matches a list-valued attribute when any
element matches, so ``Match("genres", "drama")`` finds items whose genre list
holds "drama". Every filter also restricts to one tenant, and ``exclude_ids``
become point ids (``HasId`` under ``must_not``).

No payload index is created for attributes: Qdrant filters unindexed payload
correctly (the tenant's keyword index narrows the candidates first), and an
index needs a type we do not know before the catalog arrives.

This module validates and plans; ``engine.store.edge.filters`` and
``engine.store.server.filters`` turn a plan into each backend's Qdrant types.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from engine import domain as q
from engine.domain import InvalidInput, point_id

ATTRIBUTES = "attributes"
"""The payload key under which item attributes live (see ``record_to_payload``)."""

_KEY = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")


@dataclass(frozen=True, slots=True)
class FilterPlan:
    """A validated filter: the tenant, conditions on payload paths, excluded point ids."""

    tenant: str
    must: tuple[q.Condition, ...] = ()
    must_not: tuple[q.Condition, ...] = ()
    excluded_points: tuple[str, ...] = ()


def _path(key: object) -> str:
    """The payload path of an attribute key; ``InvalidInput`` for a key we cannot address."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidInput(
            f"filter key {key!r} is not an attribute name (letters, digits, _ and -, "
            f"dots for nested attributes)"
        )
    return f"{ATTRIBUTES}.{key}"


def _check_bound(key: str, bound: object) -> None:
    """``InvalidInput`` unless a Range bound is ``None`` or a finite int or float (not a bool)."""
    if bound is not None and (
        isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound)
    ):
        raise InvalidInput(f"Range on {key!r} has a bad bound {bound!r}")


def _condition(condition: object) -> q.Condition:
    """A condition with its key turned into a payload path, after checking its values."""
    if isinstance(condition, q.Match):
        if not isinstance(condition.value, str | int):  # bool is an int
            raise InvalidInput(
                f"Match on {condition.key!r} needs a string, integer or bool, got "
                f"{condition.value!r}; use Range for numbers with a fraction"
            )
        return q.Match(_path(condition.key), condition.value)
    if isinstance(condition, q.MatchAny):
        values = tuple(condition.values)
        kinds = {type(value) for value in values}
        if not values or not (kinds == {str} or kinds == {int}):
            raise InvalidInput(
                f"MatchAny on {condition.key!r} needs one or more values, all strings or all "
                f"integers, got {values!r}"
            )
        return q.MatchAny(_path(condition.key), values)
    if isinstance(condition, q.Range):
        bounds = (condition.gte, condition.gt, condition.lte, condition.lt)
        if all(bound is None for bound in bounds):
            raise InvalidInput(f"Range on {condition.key!r} needs at least one bound")
        for bound in bounds:
            _check_bound(condition.key, bound)
        return q.Range(_path(condition.key), *bounds)
    raise InvalidInput(f"unknown filter condition {condition!r}")


def plan_filter(tenant: str, item_filter: q.ItemFilter | None) -> FilterPlan:
    """Validate ``item_filter`` for ``tenant``; ``InvalidInput`` for anything malformed."""
    if item_filter is None:
        return FilterPlan(tenant)
    excluded = tuple(
        point_id(tenant, str(item_id)) for item_id in dict.fromkeys(item_filter.exclude_ids)
    )
    return FilterPlan(
        tenant,
        must=tuple(_condition(c) for c in item_filter.must),
        must_not=tuple(_condition(c) for c in item_filter.must_not),
        excluded_points=excluded,
    )


def with_condition(plan: FilterPlan, condition: q.Condition) -> FilterPlan:
    """``plan`` with one more ``must`` condition, whose key is a payload path as it is
    (the store's own fields, such as ``popularity``; not an attribute key)."""
    return replace(plan, must=(*plan.must, condition))
