"""The behaviour models an engine serves, each bound to the one tenant whose log trained it.

Item ids are unique within a tenant only, so a model trained on tenant ``a``'s
interaction log knows ``a``'s items: applied to tenant ``b`` it would give
``b``'s items ``a``'s vectors wherever ids collide, encode ``b``'s histories
with ``a``'s co-occurrences and reveal which ids ``a``'s log holds. Every
consumer therefore asks for the models of one tenant (:meth:`ServedModels.for_tenant`);
a tenant without a model of its own gets none, exactly as if none were loaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from engine.behaviour.base import BehaviourModel


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One channel's model, the tenant it serves and its stored vectors by item id."""

    model: BehaviourModel
    tenant: str
    vectors: Mapping[str, np.ndarray]
    """Item id -> the vector the store keeps for it (re-indexed items get it again)."""


class ServedModels:
    """Behaviour models by the named vector they fill, each serving a single tenant."""

    def __init__(self) -> None:
        self._served: dict[str, ServedModel] = {}

    def serve(self, name: str, model: BehaviourModel, tenant: str) -> None:
        """Serve ``model`` on channel ``name`` for ``tenant`` (replacing that channel's model)."""
        ids, vectors = model.item_vectors()
        self._served[name] = ServedModel(model, tenant, dict(zip(ids, vectors, strict=True)))

    def for_tenant(self, tenant: str) -> dict[str, BehaviourModel]:
        """The models serving ``tenant``, by channel (empty for a tenant without one)."""
        return {name: s.model for name, s in self._served.items() if s.tenant == tenant}

    def vectors_of(self, item_id: str, tenant: str) -> dict[str, np.ndarray]:
        """The behaviour vectors of ``tenant``'s item ``item_id``, by channel."""
        return {name: s.vectors[item_id] for name, s in self._served.items()
                if s.tenant == tenant and item_id in s.vectors}

    def tenant_of(self, name: str) -> str | None:
        """The tenant channel ``name``'s model serves; None when no model fills it."""
        served = self._served.get(name)
        return served.tenant if served is not None else None

    def get(self, name: str) -> BehaviourModel | None:
        """Channel ``name``'s model whichever tenant it serves (for status, never for answers)."""
        served = self._served.get(name)
        return served.model if served is not None else None

    def __contains__(self, name: object) -> bool:
        return name in self._served

    def __iter__(self) -> Iterator[str]:
        return iter(self._served)
