"""A :class:`engine.store.filters.FilterPlan` as qdrant-client types."""

from __future__ import annotations

from qdrant_client import models

from engine import domain as q
from engine.store.filters import FilterPlan


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
