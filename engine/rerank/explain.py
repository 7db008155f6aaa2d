"""Why each result is there: per-channel standing, fusion, re-rank, matched words, a reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from engine.domain import Explanation, RankedItem


class TermMatcher(Protocol):
    """What the explainer needs from the lexical encoder."""

    def matched_terms(self, query: str, document: str) -> list[str]:
        """Query words whose analysed terms occur in the document."""


WriteReason = Callable[[str, str, float], "str | None"]
"""(query, item text, deadline) -> one sentence, or None when time ran out."""


class Explainer:
    """Builds an :class:`Explanation` per result from what the earlier stages recorded."""

    def __init__(self, lexical: TermMatcher | None, reasons: WriteReason | None) -> None:
        self.lexical = lexical
        self.reasons = reasons

    def explain(self, query: str, items: Sequence[RankedItem], *, with_reason: bool,
                deadline: float) -> list[Explanation]:
        """Explanations in result order; reasons are written top first while time allows."""
        out = []
        for rank, item in enumerate(items, start=1):
            text = item.hit.record.document_text
            terms = (self.lexical.matched_terms(query, text)
                     if self.lexical is not None and query and text else [])
            reason = ""
            if with_reason and self.reasons is not None and query and text:
                reason = self.reasons(query, text, deadline) or ""
            out.append(Explanation(rank=rank, fused_rank=item.fused_rank,
                                   fused_score=item.hit.score, channels=dict(item.hit.channels),
                                   rerank_score=item.rerank_score, matched_terms=terms,
                                   reason=reason))
        return out
