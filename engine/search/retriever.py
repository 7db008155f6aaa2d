"""Hybrid retrieval: one Query API call, a prefetch per channel, fused by RRF or DBSF; exact
identifiers first.

Every channel the encoded query fills (``fused``, each dense channel, the sparse
``lexical`` vector) whose weight is above 0 becomes one prefetch; the request's
filter and tenant apply inside every prefetch (see ``engine.store.hybrid``).

**No channel counts twice.** A channel that repeats another for this query
(``Vectoriser.duplicates``: with CLIP off the fused query vector is the text vector
again) is not searched: it is folded into the channel it repeats, which keeps the
larger of the two weights. The result's channel list names it after the channels
searched, as ``"fused (folded into text)"``, and the first fold of each kind is
logged.

**Exact identifiers first.** RRF sees ranks only. When the dense channel puts a
near-identical code first (``XK-4471`` for ``XK-4417``) and BM25 the exact one, the
two candidates tie at best, and no lexical weight breaks the tie: the other item is
BM25's second, worth nearly as much as its first. So when the query names a code
(``LexicalEncoder.identifiers``: ``XK-4417``, ``xk4417`` and ``XK 4417`` alike) and
the lexical channel is searched, the fused candidates whose text holds one of the
query's codes go first (most codes first, fused order among equals), the others
follow in fused order. To have them at hand, the store is asked for as many fused
candidates as one channel brings (exact matches head the lexical channel), and the
list is cut back to the limit after. The channel list then ends with
``identifier``, and, with ``explain``, each promoted hit carries the standing
``identifier``: its rank among them and, as score, how many of the query's codes
its text holds. Scores stay the fusion's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from engine.config import RetrievalSettings
from engine.domain import (
    LEXICAL,
    ChannelHit,
    ChannelQuery,
    EncodedQuery,
    FusedHit,
    HybridQuery,
    InvalidInput,
    SearchRequest,
)
from engine.store import VectorStore

log = logging.getLogger(__name__)

IDENTIFIER = "identifier"
"""The standing a hit holding one of the query's codes reports, and its entry in the channel
list of a search that moved such hits first."""


class IdentifierReader(Protocol):
    """What exact-identifier matching needs from the lexical encoder."""

    def identifiers(self, text: str) -> frozenset[int]:
        """Term ids of the codes a text names, one per code."""


def folded_name(channel: str, into: str) -> str:
    """How the channel list reports a channel folded into another: ``fused (folded into text)``."""
    return f"{channel} (folded into {into})"


def exact_first(hits: Sequence[FusedHit], codes: frozenset[int],
                read: Callable[[str], frozenset[int]], *, with_standing: bool
                ) -> tuple[list[FusedHit], int]:
    """``hits`` with those whose text holds one of ``codes`` first, and how many those are.

    Hits holding more of the codes come first; equals keep their fused order, as do
    the hits holding none. With ``with_standing`` each moved hit gets the standing
    :data:`IDENTIFIER` (rank among them, number of codes held).
    """
    held = [len(codes & read(hit.record.document_text)) for hit in hits]
    order = sorted(range(len(hits)), key=lambda i: -held[i])  # stable
    out: list[FusedHit] = []
    for rank, index in enumerate(order, start=1):
        hit = hits[index]
        if held[index] and with_standing:
            standing = ChannelHit(rank, float(held[index]))
            hit = replace(hit, channels={**hit.channels, IDENTIFIER: standing})
        out.append(hit)
    return out, sum(1 for count in held if count)


class HybridRetriever:
    """One Query API call: a prefetch per channel, fused by RRF or DBSF, filters inside each;
    exact identifiers first."""

    def __init__(self, store: VectorStore, settings: RetrievalSettings) -> None:
        self.store = store
        self.settings = settings
        self._logged: set[tuple[str, str]] = set()

    def _weights(self, request: SearchRequest) -> dict[str, float]:
        """Channel weights: the request's over the configured ones."""
        return {**self.settings.weights, **request.weights}

    def folds(self, query: EncodedQuery, request: SearchRequest,
              duplicates: Mapping[str, str] | None = None) -> dict[str, str]:
        """The duplicates (channel -> the channel it repeats) of which both sides would be
        searched: those are folded, the repeating one is left out."""
        weights = self._weights(request)
        live = {name for name in query.vectors if weights.get(name, 1.0) > 0}
        return {channel: into for channel, into in (duplicates or {}).items()
                if channel in live and into in live and channel != into}

    def channels(self, query: EncodedQuery, request: SearchRequest, limit: int,
                 duplicates: Mapping[str, str] | None = None) -> list[ChannelQuery]:
        """One prefetch per channel the query fills and whose weight (request over config) > 0,
        less the folded duplicates; a channel keeps the largest weight folded into it."""
        weights = self._weights(request)
        folds = self.folds(query, request, duplicates)
        candidates = max(request.candidates or self.settings.candidates, limit)
        channels: list[ChannelQuery] = []
        for name, vector in query.vectors.items():
            weight = weights.get(name, 1.0)
            if weight <= 0 or name in folds:
                continue
            folded = [weights.get(other, 1.0) for other, into in folds.items() if into == name]
            channels.append(ChannelQuery(name, vector, candidates, max([weight, *folded])))
        if not channels:
            raise InvalidInput("every channel this query could use has weight 0")
        return channels

    def retrieve(self, query: EncodedQuery, request: SearchRequest, limit: int, *,
                 duplicates: Mapping[str, str] | None = None,
                 identifiers: IdentifierReader | None = None,
                 ) -> tuple[list[FusedHit], str, list[str]]:
        """Fused candidates best first, the fusion used, and the channels searched (then the
        rule and the folds that shaped the ranking, see the module docstring).

        ``duplicates`` come from ``Vectoriser.duplicates``; ``identifiers`` (the lexical
        encoder) turns on exact-identifier matching.
        """
        channels = self.channels(query, request, limit, duplicates)
        codes = frozenset[int]()
        if identifiers is not None and request.text and any(c.using == LEXICAL for c in channels):
            codes = identifiers.identifiers(request.text)
        fusion = request.fusion or self.settings.fusion
        hits = self.store.hybrid_search(HybridQuery(
            channels=channels, limit=max(limit, channels[0].limit) if codes else limit,
            tenant=request.tenant, fusion=fusion, rrf_k=request.rrf_k or self.settings.rrf_k,
            filter=request.filter, with_channel_hits=request.explain))
        names = [c.using for c in channels]
        if codes and identifiers is not None:
            hits, promoted = exact_first(hits, codes, identifiers.identifiers,
                                         with_standing=request.explain)
            hits = hits[:limit]
            names += [IDENTIFIER] if promoted else []
        folds = self.folds(query, request, duplicates)
        self._log_folds(folds)
        return hits, fusion, names + [folded_name(c, into) for c, into in folds.items()]

    def _log_folds(self, folds: Mapping[str, str]) -> None:
        """Log each kind of fold once per retriever (every query of a CLIP-less engine folds)."""
        for channel, into in folds.items():
            if (channel, into) not in self._logged:
                self._logged.add((channel, into))
                log.info("search: channel %r repeats %r for these queries (one content part "
                         "fills the fused vector); it is searched once, as %r", channel, into,
                         into)
