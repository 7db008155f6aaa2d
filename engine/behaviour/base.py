"""What every model learned from the interaction log offers the engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class BehaviourModel(Protocol):
    """A model whose item vectors live in a named vector and whose history encoding queries it.

    Both kinds (SASRec in :mod:`engine.behaviour.sequential`, co-occurrence in
    :mod:`engine.behaviour.cooccurrence`) store MIPS-transformed unit vectors,
    so Qdrant's cosine ranking equals the model's own dot-product ranking.
    """

    @property
    def vector_dim(self) -> int:
        """Values per stored item vector."""

    def item_vectors(self) -> tuple[list[str], np.ndarray]:
        """Every item the model knows and its stored vector (rows aligned)."""

    def encode(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """One query vector per history (item ids, oldest first); zeros when nothing is known."""
