"""Why each result is there: per-channel standing, fusion, re-rank, matched words, a reason.

Every explanation carries one sentence. By default it is the plain sentence
built from the result's facts (:mod:`engine.rerank.facts`); when a reason is
asked for and an LLM is loaded, the LLM writes it from the same facts and the
faithfulness checks decide whether its sentence stands
(:mod:`engine.rerank.faithfulness`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from engine.domain import Explanation, ItemRecord, RankedItem
from engine.domain.results import ReasonFacts
from engine.rerank.facts import plain_sentence, reason_facts
from engine.rerank.faithfulness import FACTS, Reason


class TermMatcher(Protocol):
    """What the explainer needs from the lexical encoder."""

    def matched_terms(self, query: str, document: str) -> list[str]:
        """Query words whose analysed terms occur in the document."""


WriteReason = Callable[[ReasonFacts, "float | None"], Reason]
"""(facts, deadline) -> a checked reason (``engine.rerank.ReasonWriter``)."""


class Explainer:
    """Builds an :class:`Explanation` per result from what the earlier stages recorded."""

    def __init__(self, lexical: TermMatcher | None, reasons: WriteReason | None) -> None:
        self.lexical = lexical
        self.reasons = reasons

    def explain(self, query: str, items: Sequence[RankedItem], *, with_reason: bool,
                deadline: float, history: Sequence[Sequence[ItemRecord]] | None = None
                ) -> list[Explanation]:
        """Explanations in result order; LLM reasons are written top first while time allows.

        ``history`` (recommend) holds, per result, the history items behind it, most
        influential first; they become ``because_of`` with their titles.
        """
        out = []
        for rank, item in enumerate(items, start=1):
            record = item.hit.record
            text = record.document_text
            terms = (self.lexical.matched_terms(query, text)
                     if self.lexical is not None and query and text else [])
            liked = history[rank - 1] if history else ()
            facts = reason_facts(record, liked=liked, query=query, matched_terms=terms,
                                 channels=list(item.hit.channels))
            reason = (self.reasons(facts, deadline) if with_reason and self.reasons is not None
                      else Reason(plain_sentence(facts), FACTS))
            out.append(Explanation(
                rank=rank, fused_rank=item.fused_rank, fused_score=item.hit.score,
                channels=dict(item.hit.channels), rerank_score=item.rerank_score,
                matched_terms=terms, reason=reason.text, because_of=[r.id for r in liked],
                because_of_titles=[r.title for r in liked], shared_attributes=facts.shared,
                reason_source=reason.source, reason_rejected=reason.rejected))
        return out
