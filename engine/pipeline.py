"""The engine: encoders, fuser and store wired together from one configuration.

Data flows one way: the service calls this module, this module calls the
encoders and the store. Everything here speaks domain types (engine.types).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine import __version__
from engine.config import EngineConfig
from engine.encoders import (
    ClipEncoder,
    TextEncoder,
    clip_embedding_dim,
    create_clip_encoder,
    create_text_encoder,
    resolve_device,
)
from engine.errors import FailedPrecondition, InvalidInput, ModelUnavailable
from engine.fusion import FUSED, VectorFuser, mix_clip
from engine.store import VectorSchema, VectorStore, open_store
from engine.types import (
    ChannelStatus,
    EngineInfo,
    ItemRecord,
    ModelStatus,
    SearchResult,
    StoredItem,
)

log = logging.getLogger(__name__)

CLIP, TEXT = "clip", "text"


@dataclass(frozen=True, slots=True)
class ItemInput:
    """An item to index: its record and, when it has one, its decoded image."""

    record: ItemRecord
    image: Image.Image | None = None


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A validated search: text, image or both, for one tenant."""

    text: str
    image: Image.Image | None
    top_k: int
    tenant: str


class Engine:
    """Encodes items and queries into fused vectors, stores them and searches them."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        text_encoder: TextEncoder,
        clip_encoder: ClipEncoder | None,
        clip_status: ModelStatus,
        clip_dim: int | None,
        store: VectorStore | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = config
        self.device = device
        self.text = text_encoder
        self.clip = clip_encoder
        self.clip_status = clip_status
        dims = {CLIP: clip_dim, TEXT: text_encoder.dim} if clip_dim else {TEXT: text_encoder.dim}
        weights = {CLIP: config.channels.clip, TEXT: config.channels.text}
        self.fuser = VectorFuser(dims, {k: weights[k] for k in dims})
        self.schema = VectorSchema(dense={FUSED: self.fuser.dim, **dims})
        self.store = store if store is not None else open_store(config.store, self.schema)

    @classmethod
    def from_config(cls, config: EngineConfig, *, store: VectorStore | None = None) -> Engine:
        """Load the models the configuration names and open the store.

        The text encoder is required. CLIP is optional: when its weights cannot
        be loaded (the usual case offline) its channel is switched off, one log
        line says why, and :meth:`info` reports it. Random weights are never
        substituted unless the configuration asks for them explicitly.
        """
        device = resolve_device(config.device)
        text_encoder = create_text_encoder(config.text_encoder, device)
        clip_encoder, clip_status = _load_clip(config, device)
        try:
            clip_dim: int | None = (
                clip_encoder.dim if clip_encoder else clip_embedding_dim(config.clip.model)
            )
        except ModelUnavailable:
            clip_dim = None
        return cls(config, text_encoder=text_encoder, clip_encoder=clip_encoder,
                   clip_status=clip_status, clip_dim=clip_dim, store=store, device=device)

    # ------------------------------------------------------------------ items
    def encode_items(self, items: Sequence[ItemInput]) -> list[StoredItem]:
        """Per-channel and fused vectors for a batch of items.

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
        has_text = np.array([bool(t) for t in texts])
        text_rows = self._rows(has_text, texts, self.text.encode_documents, self.text.dim)
        parts: dict[str, np.ndarray] = {TEXT: text_rows}
        if self.clip is not None:
            has_image = np.array([it.image is not None for it in items])
            images = [it.image for it in items]
            img = self._rows(has_image, images, self.clip.encode_images, self.clip.dim)
            txt = self._rows(has_text, texts, self.clip.encode_texts, self.clip.dim)
            parts[CLIP] = mix_clip(img, txt, self.config.clip.image_weight)
        fused = self.fuser.fuse(parts)
        stored = []
        for i, item in enumerate(items):
            vectors = {FUSED: fused[i]}
            vectors.update({name: rows[i] for name, rows in parts.items() if np.any(rows[i])})
            stored.append(StoredItem(record=item.record, vectors=vectors))
        return stored

    def upsert(self, items: Sequence[ItemInput]) -> int:
        """Encode and store items (replacing any with the same tenant and id); returns the count."""
        stored = self.encode_items(items)
        self.store.upsert(stored)
        return len(stored)

    @staticmethod
    def _rows(mask: np.ndarray, values: Sequence, encode, dim: int) -> np.ndarray:  # type: ignore[no-untyped-def]
        """Encode only the rows where ``mask`` is set; the others stay zero (missing)."""
        out = np.zeros((len(values), dim), dtype=np.float32)
        idx = np.flatnonzero(mask)
        if len(idx):
            out[idx] = encode([values[i] for i in idx])
        return out

    # ----------------------------------------------------------------- search
    def search(self, query: SearchQuery) -> SearchResult:
        """Items nearest to the query's fused vector within its tenant.

        A text query fills the CLIP part with CLIP text and the text part with
        the text encoder; an image query fills the CLIP part with CLIP image;
        both mix the CLIP parts as items do.
        """
        if query.image is not None and self.clip is None:
            raise FailedPrecondition(
                "image search needs the CLIP channel, which is off: "
                f"{self.clip_status.reason or 'CLIP is disabled'}"
            )
        if not query.text and query.image is None:
            raise InvalidInput("a search needs text, an image, or both")
        parts: dict[str, np.ndarray] = {}
        if query.text:
            parts[TEXT] = self.text.encode_queries([query.text])[0]
        if self.clip is not None:
            img = self.clip.encode_images([query.image])[0] if query.image is not None else None
            txt = self.clip.encode_texts([query.text])[0] if query.text else None
            parts[CLIP] = mix_clip(img, txt, self.config.clip.image_weight)
        vector = self.fuser.fuse(parts)
        hits = self.store.search(vector, using=FUSED, limit=query.top_k, tenant=query.tenant)
        return SearchResult(hits=hits, channels=[c for c in self.fuser.dims if c in parts])

    def get(self, ids: Sequence[str], tenant: str) -> list[ItemRecord]:
        """Stored records in the order asked; unknown ids are left out."""
        return self.store.get(ids, tenant=tenant)

    def delete(self, ids: Sequence[str], tenant: str) -> int:
        """Remove items; returns how many existed."""
        return self.store.delete(ids, tenant=tenant)

    # ------------------------------------------------------------------- info
    def info(self) -> EngineInfo:
        """Models, channels and item count, for `mmrec info` and the GetInfo RPC."""
        models = [ModelStatus("text", self.text.name, True), self.clip_status]
        enabled = {CLIP: self.clip is not None, TEXT: True}
        channels = [ChannelStatus(FUSED, self.fuser.dim, 0.0, True)] + [
            ChannelStatus(name, dim, float(self.fuser.weights[name]), enabled[name])
            for name, dim in self.fuser.dims.items()
        ]
        return EngineInfo(version=__version__, device=self.device, store=self.store.description,
                          item_count=self.store.count(), models=models, channels=channels)

    def close(self) -> None:
        """Flush and close the store."""
        self.store.close()


def _load_clip(config: EngineConfig, device: str) -> tuple[ClipEncoder | None, ModelStatus]:
    """The CLIP encoder, or None with the reason it is off (logged once, plainly)."""
    wanted = f"open_clip {config.clip.model} {config.clip.pretrained or ''}".strip()
    if not config.clip.enabled:
        log.warning("CLIP channel off: disabled in the configuration (clip.enabled = false)")
        return None, ModelStatus(CLIP, wanted, False, "disabled in the configuration")
    try:
        encoder = create_clip_encoder(config.clip, device)
    except ModelUnavailable as exc:
        log.warning("CLIP channel off: %s Text search works; image search is refused.",
                    str(exc).rstrip(".") + ".")
        return None, ModelStatus(CLIP, wanted, False, str(exc))
    return encoder, ModelStatus(CLIP, encoder.name, True)
