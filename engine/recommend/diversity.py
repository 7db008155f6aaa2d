"""Diversity: maximal marginal relevance over a list already in relevance order."""

from __future__ import annotations

import numpy as np


def mmr_order(vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    """Greedy maximal marginal relevance over a list already in relevance order.

    Relevance is rank-based (1 for the first, falling linearly), because fused
    scores are not on a scale comparable with cosine similarity. ``diversity``
    is MMR's lambda: 1 keeps the order, lower values trade relevance for variety.
    """
    n = len(vectors)
    if n == 0:
        return []
    relevance = 1.0 - np.arange(n) / n
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    chosen: list[int] = [0]
    closest = unit @ unit[0]
    while len(chosen) < min(k, n):
        gain = diversity * relevance - (1.0 - diversity) * closest
        gain[chosen] = -np.inf
        pick = int(np.argmax(gain))
        chosen.append(pick)
        closest = np.maximum(closest, unit @ unit[pick])
    return chosen
