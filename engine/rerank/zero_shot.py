"""The zero-shot LLM scorer behind the stage's protocol: contrastive likelihood of item texts.

:class:`~engine.rerank.llm.LlmReranker` scores texts against a query text. For
search the query is the search text; for a recommendation without a trained
re-ranker it is the context and the recent history's titles (LlamaRec's idea,
zero-shot). Its blend weight comes from the config (``rerank.search_blend_weight``
and ``rerank.zero_shot_recommend_weight``), chosen on validation data.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.domain import ItemRecord
from engine.rerank.llm import LlmReranker
from engine.rerank.stage import Blend, RerankQuery, RerankScores

HISTORY_TITLES = 10
"""Recent history titles put into the zero-shot prompt."""


def query_text(query: RerankQuery) -> str:
    """The text the zero-shot scorer conditions on: context, then the latest liked titles."""
    recent = list(query.history)[-HISTORY_TITLES:]
    titles = "; ".join(r.title or r.document_text[:80] for r in recent)
    text = f"more like what I enjoyed recently: {titles}" if titles else ""
    if query.text:
        text = f"{query.text}, {text}" if text else query.text
    return text


class ZeroShotReranker:
    """An untrained :class:`LlmReranker` as a :class:`~engine.rerank.stage.Reranker`."""

    def __init__(self, llm: LlmReranker, blend: Blend) -> None:
        self.llm, self._blend = llm, blend

    @property
    def name(self) -> str:
        """The model's name, marked zero-shot."""
        return f"{self.llm.name} (zero-shot)"

    @property
    def blend(self) -> Blend:
        """The configured blend with the fused order."""
        return self._blend

    def score(self, query: RerankQuery, candidates: Sequence[ItemRecord], *,
              deadline: float | None = None) -> RerankScores:
        """Contrastive log-likelihood of each candidate's text given :func:`query_text`."""
        return self.llm.score(query_text(query), [c.document_text for c in candidates],
                              deadline=deadline)
