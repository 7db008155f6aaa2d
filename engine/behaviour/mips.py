"""Maximum inner product search with a cosine index (Bachrach et al., 2014).

Qdrant's named vectors here are cosine; behaviour models rank by dot product.
Items become ``[e, sqrt(M^2 - |e|^2)] / M`` (``M`` the largest norm) and queries
``[q, 0] / |q|``: then cosine(query, item) = q . e / (|q| M), the dot-product
order for every query. Used by the SASRec and co-occurrence channels.
"""

from __future__ import annotations

import math

import numpy as np


def mips_items(table: np.ndarray) -> np.ndarray:
    """Item embeddings as unit vectors whose cosine with a query keeps the dot-product order."""
    table = table.astype(np.float64)
    norms_sq = np.einsum("ij,ij->i", table, table)
    top = math.sqrt(float(norms_sq.max())) if len(table) else 0.0
    if top == 0.0:
        return np.zeros((len(table), table.shape[1] + 1), np.float32)
    extra = np.sqrt(np.clip(top * top - norms_sq, 0.0, None))
    return (np.concatenate([table, extra[:, None]], axis=1) / top).astype(np.float32)


def mips_queries(queries: np.ndarray) -> np.ndarray:
    """Query vectors for :func:`mips_items` vectors: unit, with a zero last coordinate."""
    queries = queries.astype(np.float64)
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    unit = np.divide(queries, norms, out=np.zeros_like(queries), where=norms > 0)
    return np.concatenate([unit, np.zeros((len(unit), 1))], axis=1).astype(np.float32)
