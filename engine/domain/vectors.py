"""Vectors and the names of every channel, defined once.

A channel is a named vector in the store (dense or sparse) and, at query time,
one prefetch of the hybrid query. ``popularity`` is not a vector: it is the
payload field cold-start recommendations are ordered by, and it appears in a
response's channel list when popular items filled it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FUSED = "fused"
"""Every dense content channel in one weighted vector (see ``engine.encoders.fusion``)."""
CLIP = "clip"
"""open_clip: an item's image and text mixed; a query's text or image."""
TEXT = "text"
"""The transformer text encoder (all-MiniLM-L6-v2 by default)."""
LEXICAL = "lexical"
"""BM25 term weights, sparse; IDF is computed by Qdrant within the tenant."""
BEHAVIOUR = "behaviour"
"""SASRec item embeddings, trained on the interaction log (``mmrec train-seq``)."""
COOCCURRENCE = "cooccurrence"
"""Recency-weighted item-kNN as SVD embeddings of the co-occurrence matrix."""
POPULARITY = "popularity"
"""Payload field (summed event weights) and the cold-start 'channel'."""

CONTENT_CHANNELS = (CLIP, TEXT)
"""Dense channels filled by the content encoders, in the fused vector's block order."""
BEHAVIOUR_CHANNELS = (BEHAVIOUR, COOCCURRENCE)
"""Dense channels filled by models trained on behaviour, not by the encoders."""


@dataclass(frozen=True, slots=True)
class SparseVector:
    """A sparse vector (the lexical channel): sorted unique term ids and their weights."""

    indices: np.ndarray
    """int64 term ids, strictly increasing."""
    values: np.ndarray
    """float32 weights, aligned with ``indices``."""

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True, slots=True)
class EncodedQuery:
    """A query in every channel that can read it: channel name -> vector."""

    vectors: dict[str, np.ndarray | SparseVector]
