"""The fused vector: every dense channel in one vector, weighted.

docs/ARCHITECTURE.md, 'The fused vector': each part is L2-normalised, scaled by the square
root of its channel weight, concatenated, and the whole is normalised again.
The cosine of two fused vectors is then the weighted sum of the per-channel
cosines (divided by the norms of the parts present), so one ANN search ranks
by all modalities at once. A missing part is a zero block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def l2_normalise(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (a missing part)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def mix_clip(image: np.ndarray | None, text: np.ndarray | None, image_weight: float) -> np.ndarray:
    """An item's CLIP part: the normalised mix of its CLIP image and CLIP text embeddings.

    Rows are aligned; a row that lacks one modality (all zeros, or the whole
    array ``None``) takes the other alone, and a row with neither stays zero.
    """
    if image is None and text is None:
        raise ValueError("mix_clip needs image or text embeddings")
    ref = image if image is not None else text
    assert ref is not None
    img = l2_normalise(image) if image is not None else np.zeros_like(ref, dtype=np.float32)
    txt = l2_normalise(text) if text is not None else np.zeros_like(ref, dtype=np.float32)
    has_img = np.any(img != 0, axis=-1, keepdims=True)
    has_txt = np.any(txt != 0, axis=-1, keepdims=True)
    w_img = np.where(has_txt, image_weight, 1.0)
    w_txt = np.where(has_img, 1.0 - image_weight, 1.0)
    return l2_normalise(w_img * img + w_txt * txt)


@dataclass(frozen=True)
class VectorFuser:
    """Lays out and builds fused vectors for a fixed, ordered set of dense channels.

    ``dims`` fixes the order and size of the blocks (the store's schema depends
    on it); ``weights`` sets each block's share. A channel that is switched off
    keeps its block, filled with zeros, so the layout of a data dir does not
    change when a model becomes available later.
    """

    dims: Mapping[str, int]
    weights: Mapping[str, float]

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(self.dims)
        if unknown:
            raise ValueError(f"weights for unknown channels {sorted(unknown)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("channel weights must be >= 0")

    @property
    def dim(self) -> int:
        """Size of the fused vector."""
        return sum(self.dims.values())

    def fuse(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        """Fused vectors for aligned rows of per-channel embeddings.

        ``parts`` maps a channel to an ``(n, dim)`` array (or a 1-D vector for
        one row); channels absent from ``parts`` and all-zero rows are missing
        parts. Returns ``(n, self.dim)`` float32 (or 1-D for 1-D input). A row
        with no part at all comes back as zeros; callers reject such items.
        """
        unknown = set(parts) - set(self.dims)
        if unknown:
            raise ValueError(f"parts for unknown channels {sorted(unknown)}")
        single = all(np.ndim(p) == 1 for p in parts.values()) and bool(parts)
        rows = {k: np.atleast_2d(np.asarray(v, dtype=np.float32)) for k, v in parts.items()}
        n = {len(r) for r in rows.values()}
        if len(n) > 1:
            raise ValueError(f"parts have different row counts: {sorted(n)}")
        count = n.pop() if n else 1
        blocks = []
        for name, dim in self.dims.items():
            part = rows.get(name)
            if part is None:
                blocks.append(np.zeros((count, dim), dtype=np.float32))
                continue
            if part.shape[1] != dim:
                raise ValueError(f"channel {name!r} has size {part.shape[1]}, expected {dim}")
            blocks.append(np.sqrt(self.weights.get(name, 1.0)) * l2_normalise(part))
        fused = l2_normalise(np.concatenate(blocks, axis=1))
        return fused[0] if single else fused
