"""The one place an item or a query becomes its named and fused vectors.

Items and queries take the same path (docs/ARCHITECTURE.md, "The fused vector"): the
content channels (CLIP, text) -> an item's CLIP part mixes its image and its
text -> the weighted fused vector -> the sparse lexical vector. The only
differences are which encoder entry point reads the text (documents or
queries) and what a missing input means: an item needs text or an image some
channel can read, a query needs text, an image, or both. Concurrent queries are
encoded together, one forward pass per encoder for each batch
(:class:`~engine.batching.MicroBatcher`, ``[query_batching]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from engine.batching import MicroBatcher
from engine.config import QueryBatchingSettings
from engine.domain import (
    CLIP,
    FUSED,
    LEXICAL,
    TEXT,
    EncodedQuery,
    FailedPrecondition,
    InvalidInput,
    ItemInput,
    SparseVector,
)
from engine.encoders.base import ClipEncoder, TextEncoder
from engine.encoders.fusion import VectorFuser, mix_clip
from engine.encoders.lexical import LexicalEncoder

Vectors = dict[str, np.ndarray | SparseVector]
"""Named vectors of one item or query: channel name -> dense array or sparse vector."""

QueryInput = tuple[str, Image.Image | None]
"""One query's text and image, as the query batcher takes it."""


class Vectoriser:
    """Text and/or images into the named vectors items are stored with and queries search."""

    def __init__(self, *, text: TextEncoder, clip: ClipEncoder | None,
                 lexical: LexicalEncoder | None, fuser: VectorFuser, image_weight: float,
                 clip_off_reason: str, batching: QueryBatchingSettings | None = None) -> None:
        """``batching`` None or off: each query is encoded alone, on its caller's thread."""
        self.text, self.clip, self.lexical, self.fuser = text, clip, lexical, fuser
        self.image_weight = image_weight
        self.clip_off_reason = clip_off_reason
        self.batcher: MicroBatcher[QueryInput, Vectors] | None = None
        """Batches concurrent queries (None: batching is off)."""
        if batching is not None and batching.enabled:
            self.batcher = MicroBatcher(self._query_batch, window_ms=batching.window_ms,
                                        max_batch=batching.max_batch)

    def items(self, items: Sequence[ItemInput]) -> list[Vectors]:
        """Per-channel, fused and lexical vectors of a batch of items, in order.

        Each item needs text or an image that some enabled channel can read;
        otherwise InvalidInput names the item.
        """
        for item in items:
            has_image = item.image is not None and self.clip is not None
            if not item.record.document_text and not has_image:
                why = " (images need the CLIP channel, which is off)" if item.image else ""
                raise InvalidInput(f"item {item.record.id!r} has no text and no usable image{why}")
        if not items:
            return []
        texts = [it.record.document_text for it in items]
        return self._vectors(texts, [it.image for it in items], query=False)

    def query(self, text: str, image: Image.Image | None, *,
              deadline: float | None = None) -> EncodedQuery:
        """A text query fills CLIP with CLIP text; an image query with CLIP image; both mix.

        With batching on it shares its forward passes with concurrent queries, waiting
        for them at most the window and never past ``deadline`` (``time.monotonic()``).
        """
        if image is not None and self.clip is None:
            raise FailedPrecondition(
                f"image search needs the CLIP channel, which is off: {self.clip_off_reason}")
        if not text and image is None:
            raise InvalidInput("a search needs text, an image, or both")
        if self.batcher is None:
            return EncodedQuery(self._query_batch([(text, image)])[0])
        return EncodedQuery(self.batcher((text, image), deadline=deadline))

    def duplicates(self, query: EncodedQuery) -> dict[str, str]:
        """Channels of ``query`` that repeat another one: ``{"fused": part}`` or nothing.

        A fused query vector made of one content part alone (CLIP off, a part's
        weight of 0 in the fused vector, an image-only query) is that part in its
        block and zeros elsewhere: its cosine to an item is the part's cosine times
        a factor that depends only on which parts the item has, so it ranks like
        the part (exactly, when every item has the same parts). Searching both would
        count one signal twice; the part's own vector is the clean copy to keep.
        """
        if FUSED not in query.vectors:
            return {}
        parts = [name for name in self.fuser.dims
                 if name in query.vectors and self.fuser.weights.get(name, 1.0) > 0]
        return {FUSED: parts[0]} if len(parts) == 1 else {}

    def _query_batch(self, queries: list[QueryInput]) -> list[Vectors]:
        """The vectors of several checked queries, in order, from one pass per encoder."""
        return self._vectors([text for text, _ in queries], [image for _, image in queries],
                             query=True)

    def _vectors(self, texts: list[str], images: Sequence[Image.Image | None], *,
                 query: bool) -> list[Vectors]:
        """The shared path: content channels -> CLIP mix -> fused -> lexical, row by row."""
        has_text = np.array([bool(t) for t in texts])
        read_text = self.text.encode_queries if query else self.text.encode_documents
        parts: dict[str, np.ndarray] = {TEXT: _rows(has_text, texts, read_text, self.text.dim)}
        if self.clip is not None:
            has_image = np.array([image is not None for image in images])
            img = _rows(has_image, images, self.clip.encode_images, self.clip.dim)
            txt = _rows(has_text, texts, self.clip.encode_texts, self.clip.dim)
            parts[CLIP] = mix_clip(img, txt, self.image_weight)
        fused = self.fuser.fuse(parts)
        lexical: list[SparseVector] | None = None
        if self.lexical is not None:
            read_terms = self.lexical.encode_queries if query else self.lexical.encode_documents
            lexical = read_terms(texts)
        out = []
        for i in range(len(texts)):
            vectors: Vectors = {FUSED: fused[i]}
            vectors.update({name: parts[name][i] for name in self.fuser.dims
                            if name in parts and np.any(parts[name][i])})
            if lexical is not None and len(lexical[i]):
                vectors[LEXICAL] = lexical[i]
            out.append(vectors)
        return out


def _rows(mask: np.ndarray, values: Sequence[Any], encode: Callable[[list[Any]], np.ndarray],
          dim: int) -> np.ndarray:
    """Encode only the rows where ``mask`` is set; the others stay zero (a missing part)."""
    out = np.zeros((len(values), dim), dtype=np.float32)
    idx = np.flatnonzero(mask)
    if len(idx):
        out[idx] = encode([values[i] for i in idx.tolist()])
    return out
