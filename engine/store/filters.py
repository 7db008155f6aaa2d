"""Payload filters: validation of an ``ItemFilter`` and its conversion for each backend.

Attribute keys name item attributes (``genres``, ``year``); the payload keeps
them under ``attributes``, so a key becomes the path ``attributes.<key>`` (dots
reach into nested attributes). Qdrant matches a list-valued attribute when any
element matches, so ``Match("genres", "drama")`` finds items whose genre list
holds "drama". Every filter also restricts to one tenant, and ``exclude_ids``
become point ids (``HasId`` under ``must_not``).

No payload index is created for attributes: Qdrant filters unindexed payload
correctly (the tenant's keyword index narrows the candidates first), and an
index needs a type we do not know before the catalog arrives.

This module and the two backends are the only places that import Qdrant types.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np
from qdrant_client import models
from qdrant_edge import (
    FieldCondition,
    Filter,
    HasIdCondition,
    MatchAny,
    MatchValue,
    RangeFloat,
)

from engine import query as q
from engine.errors import InvalidInput
from engine.types import point_id

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
            if bound is not None and (
                isinstance(bound, bool)
                or not isinstance(bound, int | float)
                or not math.isfinite(bound)
            ):
                raise InvalidInput(f"Range on {condition.key!r} has a bad bound {bound!r}")
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


# -- qdrant-edge ------------------------------------------------------------------------------


def _edge_match_value(value: str | int | bool) -> MatchValue:
    """``MatchValue`` for qdrant-edge. Its 0.9.0 binding reads a Python ``bool`` as the
    integer 1 or 0, which then matches no boolean payload; a numpy bool stays a bool."""
    return MatchValue(np.bool_(value) if isinstance(value, bool) else value)


def _edge_condition(condition: q.Condition) -> FieldCondition:
    """One validated condition as a qdrant-edge field condition."""
    if isinstance(condition, q.Match):
        return FieldCondition(key=condition.key, match=_edge_match_value(condition.value))
    if isinstance(condition, q.MatchAny):
        return FieldCondition(key=condition.key, match=MatchAny(list(condition.values)))
    return FieldCondition(
        key=condition.key,
        range=RangeFloat(gte=condition.gte, gt=condition.gt, lte=condition.lte, lt=condition.lt),
    )


def edge_tenant_filter(tenant: str) -> Filter:
    """Only points whose payload tenant equals ``tenant`` (qdrant-edge)."""
    return Filter(must=[FieldCondition(key="tenant", match=MatchValue(tenant))])


def edge_filter(plan: FilterPlan) -> Filter:
    """The whole filter, tenant included, for qdrant-edge."""
    must = [FieldCondition(key="tenant", match=MatchValue(plan.tenant))]
    must += [_edge_condition(c) for c in plan.must]
    must_not: list[FieldCondition | HasIdCondition] = [
        _edge_condition(c) for c in plan.must_not
    ]
    if plan.excluded_points:
        must_not.append(HasIdCondition(set(plan.excluded_points)))
    return Filter(must=must, must_not=must_not or None)


# -- qdrant-client ----------------------------------------------------------------------------


def _client_condition(condition: q.Condition) -> models.FieldCondition:
    """One validated condition as a qdrant-client field condition."""
    if isinstance(condition, q.Match):
        return models.FieldCondition(
            key=condition.key, match=models.MatchValue(value=condition.value)
        )
    if isinstance(condition, q.MatchAny):
        return models.FieldCondition(
            key=condition.key, match=models.MatchAny(any=list(condition.values))
        )
    return models.FieldCondition(
        key=condition.key,
        range=models.Range(gte=condition.gte, gt=condition.gt, lte=condition.lte, lt=condition.lt),
    )


def client_tenant_filter(tenant: str) -> models.Filter:
    """Only points whose payload tenant equals ``tenant`` (qdrant-client)."""
    return models.Filter(
        must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
    )


def client_filter(plan: FilterPlan) -> models.Filter:
    """The whole filter, tenant included, for qdrant-client."""
    must: list[models.Condition] = [
        models.FieldCondition(key="tenant", match=models.MatchValue(value=plan.tenant))
    ]
    must += [_client_condition(c) for c in plan.must]
    must_not: list[models.Condition] = [_client_condition(c) for c in plan.must_not]
    if plan.excluded_points:
        must_not.append(models.HasIdCondition(has_id=list(plan.excluded_points)))
    return models.Filter(must=must, must_not=must_not or None)
