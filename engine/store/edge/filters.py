"""A :class:`engine.store.filters.FilterPlan` as qdrant-edge types."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qdrant_edge import FieldCondition, Filter, HasIdCondition, MatchAny, MatchValue, RangeFloat

from engine import domain as q
from engine.store.filters import FilterPlan

if TYPE_CHECKING:
    from qdrant_edge import ConditionType  # only in qdrant-edge's stub: what a Filter lists


def _edge_match_value(value: str | int | bool) -> MatchValue:
    """``MatchValue`` for qdrant-edge. Its 0.9.0 binding reads a Python ``bool`` as the
    integer 1 or 0, which then matches no boolean payload; a numpy bool stays a bool."""
    if isinstance(value, bool):
        return MatchValue(np.bool_(value))  # type: ignore[arg-type]  # why: stub omits np.bool_
    return MatchValue(value)


def _edge_match_any(values: tuple[str | int, ...]) -> MatchAny:
    """``MatchAny`` of values that ``plan_filter`` checked are all strings or all integers."""
    strings = [value for value in values if isinstance(value, str)]
    if strings:
        return MatchAny(strings)
    return MatchAny([value for value in values if isinstance(value, int)])


def _edge_condition(condition: q.Condition) -> FieldCondition:
    """One validated condition as a qdrant-edge field condition."""
    if isinstance(condition, q.Match):
        return FieldCondition(key=condition.key, match=_edge_match_value(condition.value))
    if isinstance(condition, q.MatchAny):
        return FieldCondition(key=condition.key, match=_edge_match_any(condition.values))
    return FieldCondition(
        key=condition.key,
        range=RangeFloat(gte=condition.gte, gt=condition.gt, lte=condition.lte, lt=condition.lt),
    )


def edge_tenant_filter(tenant: str) -> Filter:
    """Only points whose payload tenant equals ``tenant`` (qdrant-edge)."""
    return Filter(must=[FieldCondition(key="tenant", match=MatchValue(tenant))])


def edge_filter(plan: FilterPlan) -> Filter:
    """The whole filter, tenant included, for qdrant-edge."""
    must: list[ConditionType] = [FieldCondition(key="tenant", match=MatchValue(plan.tenant))]
    must += [_edge_condition(c) for c in plan.must]
    must_not: list[ConditionType] = [_edge_condition(c) for c in plan.must_not]
    if plan.excluded_points:
        must_not.append(HasIdCondition(set(plan.excluded_points)))
    return Filter(must=must, must_not=must_not or None)


