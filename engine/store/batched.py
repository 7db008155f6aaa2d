"""Hybrid searches of concurrent callers answered by one backend request.

Every Search and Recommend ends in ``VectorStore.hybrid_search``: one Query API request of a
few sub-requests (the fused query, then the channel rankings an explanation needs). Both
backends take many such requests in one call (qdrant-edge ``query_batch``, the server's
``query_batch_points``), so concurrent searches can share one call as concurrent queries
share one encoder pass: :class:`BatchedSearch` plans each query on its caller's thread
(so a malformed query is refused there, alone), then hands the plans to a
:class:`~engine.batching.MicroBatcher` whose pass is the backend's ``search_plans``.

**Errors stay with their query.** If the shared request fails and it held more than one
query, each query is asked again alone, and each caller gets its own answer or its own
error: one query the backend refuses never fails its neighbours. A backend that is down
fails each of them alike, as it would have alone.

Off (``[query_batching] store = false``, or before ``enable``) a search is one request of
its own, on its caller's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.batching import MicroBatcher
from engine.domain import FusedHit, HybridQuery
from engine.store.hybrid import HybridPlan, plan_hybrid
from engine.store.schema import VectorSchema

SearchPlans = Callable[[list[HybridPlan]], Sequence[list[FusedHit]]]
"""A backend's one request for many plans: each plan's hits, in the plans' order."""

_Answer = list[FusedHit] | Exception


class BatchedSearch:
    """``hybrid_search`` for a backend, batching concurrent callers once enabled."""

    def __init__(self, schema: VectorSchema, search_plans: SearchPlans) -> None:
        self._schema = schema
        self._search_plans = search_plans
        self._batcher: MicroBatcher[HybridPlan, _Answer] | None = None

    def enable(self, *, window_ms: float, max_batch: int) -> None:
        """Batch concurrent searches from now on (see ``engine.batching`` for the window)."""
        self._batcher = MicroBatcher(self._answers, window_ms=window_ms, max_batch=max_batch)

    def __call__(self, query: HybridQuery) -> list[FusedHit]:
        """The hits of ``query`` (``InvalidInput`` for a malformed one, raised here)."""
        plan = plan_hybrid(self._schema, query)
        if plan is None:
            return []
        if self._batcher is None:
            return self._search_plans([plan])[0]
        answer = self._batcher(plan)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def batch_sizes(self) -> dict[int, int]:
        """How many backend requests carried each number of searches (empty when off)."""
        return self._batcher.batch_sizes() if self._batcher is not None else {}

    def _answers(self, plans: list[HybridPlan]) -> list[_Answer]:
        """One request for all ``plans``; if it fails, one request each, errors kept apart."""
        try:
            return list(self._search_plans(plans))
        except Exception:
            if len(plans) == 1:
                raise
        answers: list[_Answer] = []
        for plan in plans:
            try:
                answers.append(self._search_plans([plan])[0])
            except Exception as exc:  # this caller's own error, raised in its thread
                answers.append(exc)
        return answers
