"""The engine: encoders, fuser, store and LLM wired together from one configuration.

Data flows one way: the service calls this module, this module calls the
encoders, the store and the re-ranker. Everything here speaks domain types.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine import __version__
from engine.collaborative import CooccurrenceModel
from engine.config import EngineConfig
from engine.encoders import (
    LexicalEncoder,
    LexicalSettings,
    clip_embedding_dim,
    create_text_encoder,
    resolve_device,
)
from engine.errors import InvalidInput, ModelUnavailable
from engine.explain import Explainer
from engine.fusion import FUSED, VectorFuser, mix_clip
from engine.models import (
    Models,
    load_clip,
    load_cooccurrence,
    load_llm_reranker,
    load_sequential,
    reason_writer,
)
from engine.profiles import ProfileBook, RecordOutcome
from engine.query import SparseVector
from engine.recommend import BEHAVIOUR, COOCCURRENCE, Recommender, RecommendRequest
from engine.search import (
    CLIP,
    LEXICAL,
    TEXT,
    HybridRetriever,
    QueryEncoder,
    SearchPipeline,
    SearchRequest,
)
from engine.sequential import SequentialModel
from engine.store import UserStore, VectorSchema, VectorStore, open_store, open_user_store
from engine.types import (
    ChannelStatus,
    EngineInfo,
    Erasure,
    Event,
    ItemRecord,
    ModelStatus,
    RecommendResult,
    SearchResult,
    StoredItem,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ItemInput:
    """An item to index: its record and, when it has one, its decoded image."""

    record: ItemRecord
    image: Image.Image | None = None


class Engine:
    """Encodes items and queries, stores items, and answers searches through the pipeline."""

    def __init__(self, config: EngineConfig, models: Models, *, store: VectorStore | None = None,
                 users: UserStore | None = None, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.models = models
        self.text, self.clip, self.lexical = models.text, models.clip, models.lexical
        self.clip_status = models.clip_status
        dims = {TEXT: models.text.dim}
        if models.clip_dim:
            dims = {CLIP: models.clip_dim, **dims}
        weights = {CLIP: config.channels.clip, TEXT: config.channels.text}
        self.fuser = VectorFuser(dims, {k: weights[k] for k in dims})
        sparse = (LEXICAL,) if models.lexical is not None else ()
        behaviour = ({BEHAVIOUR: config.sequential.dim + 1} if config.sequential.enabled
                     else {})
        if config.sequential.enabled and config.sequential.cooccurrence_dim:
            behaviour[COOCCURRENCE] = config.sequential.cooccurrence_dim + 1
        self.schema = VectorSchema(dense={FUSED: self.fuser.dim, **dims, **behaviour},
                                   sparse=sparse)
        self.sequential = models.sequential
        if self.sequential is not None and self.sequential.vector_dim != behaviour.get(BEHAVIOUR):
            raise ModelUnavailable(
                f"the behaviour model has {self.sequential.vector_dim}-d vectors but the store "
                f"expects {behaviour.get(BEHAVIOUR)} (sequential.dim + 1); retrain it with "
                f"mmrec train-seq or set sequential.dim")
        self.cooccurrence = models.cooccurrence
        if (self.cooccurrence is not None
                and self.cooccurrence.vector_dim != behaviour.get(COOCCURRENCE)):
            raise ModelUnavailable(
                f"the co-occurrence model has {self.cooccurrence.vector_dim}-d vectors but the "
                f"store expects {behaviour.get(COOCCURRENCE)}; retrain with mmrec train-seq")
        self._derived = self._derived_vectors()
        self._store = store if store is not None else open_store(config.store, self.schema)
        self.users = users if users is not None else open_user_store(
            config.store, {"profile": self.fuser.dim})
        encoder = QueryEncoder(text=models.text, clip=models.clip, lexical=models.lexical,
                               fuser=self.fuser, image_weight=config.clip.image_weight,
                               clip_off_reason=self.clip_status.reason or "CLIP is disabled")
        reasons = reason_writer(models.reranker)
        off = models.reranker_status.reason if models.reranker_status else "re-ranking is off"
        explainer = Explainer(models.lexical, reasons)
        retriever = HybridRetriever(self._store, config.retrieval)
        self.pipeline = SearchPipeline(encoder, retriever, models.reranker, off,  # type: ignore[arg-type]
                                       explainer, config.rerank)
        self.profiles = ProfileBook(self.users, self._store, config.profiles,
                                    content_vector=config.recommend.content_vector)
        self.recommender = Recommender(self.profiles, retriever, encoder, self.sequential,
                                       models.reranker, off, explainer, config.recommend,  # type: ignore[arg-type]
                                       config.rerank, cooccurrence=self.cooccurrence)

    @property
    def store(self) -> VectorStore:
        """Where items live; assigning another store (a benchmark's scratch one) rewires search."""
        return self._store

    @store.setter
    def store(self, store: VectorStore) -> None:
        self._store = store
        self.pipeline.retriever.store = store
        self.profiles.items = store

    @classmethod
    def from_config(cls, config: EngineConfig, *, store: VectorStore | None = None,
                    load_reranker: bool = True) -> Engine:
        """Load the models the configuration names and open the store.

        The text encoder is required. CLIP and the LLM re-ranker are optional:
        when one cannot be loaded (CLIP weights are usually missing offline) it
        is switched off, one log line says why, and :meth:`info` reports it.
        Random weights are never substituted unless the configuration asks.
        Bulk indexing passes ``load_reranker=False``: it never searches.
        """
        device = resolve_device(config.device)
        text_encoder = create_text_encoder(config.text_encoder, device)
        clip_encoder, clip_status = load_clip(config, device)
        try:
            clip_dim: int | None = (
                clip_encoder.dim if clip_encoder else clip_embedding_dim(config.clip.model))
        except ModelUnavailable:
            clip_dim = None
        lexical = (LexicalEncoder(LexicalSettings(language=config.retrieval.lexical_language))
                   if config.retrieval.lexical else None)
        reranker, reranker_status = (load_llm_reranker(config, device) if load_reranker
                                     else (None, None))
        sequential, sequential_status = load_sequential(config, device)
        cooccurrence = load_cooccurrence(config)
        models = Models(text_encoder, clip_encoder, clip_status, clip_dim, lexical, reranker,
                        reranker_status, sequential, sequential_status, cooccurrence)
        return cls(config, models, store=store, device=device)

    # ------------------------------------------------------------------ items
    def encode_items(self, items: Sequence[ItemInput]) -> list[StoredItem]:
        """Per-channel, fused and lexical vectors for a batch of items.

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
        text_rows = _rows(has_text, texts, self.text.encode_documents, self.text.dim)
        parts: dict[str, np.ndarray] = {TEXT: text_rows}
        if self.clip is not None:
            has_image = np.array([it.image is not None for it in items])
            images = [it.image for it in items]
            img = _rows(has_image, images, self.clip.encode_images, self.clip.dim)
            txt = _rows(has_text, texts, self.clip.encode_texts, self.clip.dim)
            parts[CLIP] = mix_clip(img, txt, self.config.clip.image_weight)
        fused = self.fuser.fuse(parts)
        lexical = self.lexical.encode_documents(texts) if self.lexical is not None else None
        stored = []
        for i, item in enumerate(items):
            vectors: dict[str, np.ndarray | SparseVector] = {FUSED: fused[i]}
            vectors.update({name: rows[i] for name, rows in parts.items() if np.any(rows[i])})
            if lexical is not None and len(lexical[i]):
                vectors[LEXICAL] = lexical[i]
            for name, by_id in self._derived.items():
                if item.record.id in by_id:
                    vectors[name] = by_id[item.record.id]
            stored.append(StoredItem(record=item.record, vectors=vectors))
        return stored

    def encode_each(self, items: Sequence[ItemInput]
                    ) -> tuple[list[StoredItem], list[tuple[int, str]]]:
        """Encode a batch, and if the engine refuses it, item by item so only bad items drop.

        Returns the encoded items (in order, without the refused ones) and
        (index in ``items``, reason) of each refused item.
        """
        try:
            return self.encode_items(items), []
        except InvalidInput:
            pass
        encoded: list[StoredItem] = []
        refused: list[tuple[int, str]] = []
        for index, item in enumerate(items):
            try:
                encoded.extend(self.encode_items([item]))
            except InvalidInput as exc:
                refused.append((index, str(exc)))
        return encoded, refused

    def upsert(self, items: Sequence[ItemInput]) -> int:
        """Encode and store items (replacing any with the same tenant and id); returns the count."""
        stored = self.encode_items(items)
        self.store.upsert(stored)
        return len(stored)

    # ----------------------------------------------------------------- search
    def search(self, request: SearchRequest) -> SearchResult:
        """Encode, retrieve (hybrid), re-rank within the budget, explain when asked."""
        return self.pipeline.search(request)

    def get(self, ids: Sequence[str], tenant: str) -> list[ItemRecord]:
        """Stored records in the order asked; unknown ids are left out."""
        return self.store.get(ids, tenant=tenant)

    def delete(self, ids: Sequence[str], tenant: str) -> int:
        """Remove items; returns how many existed."""
        return self.store.delete(ids, tenant=tenant)

    # ------------------------------------------------------------ behaviour
    def _derived_vectors(self) -> dict[str, dict[str, np.ndarray]]:
        """Vector name -> item id -> vector, of the loaded behaviour models (for re-indexing).

        Keyed by item id across tenants: the models are trained per catalog.
        """
        derived = {}
        for name, model in ((BEHAVIOUR, self.sequential), (COOCCURRENCE, self.cooccurrence)):
            if model is not None:
                ids, vectors = model.item_vectors()
                derived[name] = dict(zip(ids, vectors, strict=True))
        return derived

    def record_events(self, events: Sequence[Event]) -> RecordOutcome:
        """Fold interaction events into their users' profiles (bad events are refused)."""
        return self.profiles.record(events)

    def recommend(self, request: RecommendRequest) -> RecommendResult:
        """Items for a user and/or example items (see ``engine.recommend``)."""
        return self.recommender.recommend(request)

    def delete_user(self, user_id: str, tenant: str) -> Erasure:
        """Erase everything stored about a user."""
        return self.profiles.delete(user_id, tenant=tenant)

    def use_sequential(self, model: SequentialModel, tenant: str) -> int:
        """Serve a newly trained behaviour model: store its item vectors, use it for queries.

        Returns how many stored items received a behaviour vector.
        """
        updated = self._store_item_vectors(BEHAVIOUR, model, tenant)
        self.sequential = self.recommender.sequential = model
        self._derived = self._derived_vectors()
        return updated

    def use_cooccurrence(self, model: CooccurrenceModel, tenant: str) -> int:
        """Serve newly fitted co-occurrence embeddings (as :meth:`use_sequential`)."""
        updated = self._store_item_vectors(COOCCURRENCE, model, tenant)
        self.cooccurrence = self.recommender.cooccurrence = model
        self._derived = self._derived_vectors()
        return updated

    def _store_item_vectors(self, name: str, model: SequentialModel | CooccurrenceModel,
                            tenant: str) -> int:
        """Write a model's item vectors into the named vector of the stored items."""
        if model.vector_dim != self.schema.dense.get(name):
            raise InvalidInput(
                f"the model's {name} vectors have {model.vector_dim} values; the store expects "
                f"{self.schema.dense.get(name)} (see the sequential section of the config)")
        ids, vectors = model.item_vectors()
        updated = 0
        for start in range(0, len(ids), 512):
            chunk = dict(zip(ids[start:start + 512], vectors[start:start + 512], strict=True))
            updated += self.store.set_vectors(chunk, tenant=tenant, using=name)
        return updated

    # ------------------------------------------------------------------- info
    def info(self) -> EngineInfo:
        """Models, channels and item count, for `mmrec info` and the GetInfo RPC."""
        models = [ModelStatus("text", self.text.name, True), self.clip_status]
        if self.lexical is not None:
            models.append(ModelStatus("lexical", self.lexical.name, True))
        if self.models.reranker_status is not None:
            models.append(self.models.reranker_status)
        if self.models.sequential_status is not None:
            models.append(self.models.sequential_status)
        enabled = {CLIP: self.clip is not None, TEXT: True}
        channels = [ChannelStatus(FUSED, self.fuser.dim, 0.0, True)] + [
            ChannelStatus(name, dim, float(self.fuser.weights[name]), enabled[name])
            for name, dim in self.fuser.dims.items()
        ]
        if self.lexical is not None:
            channels.append(ChannelStatus(LEXICAL, 0, 0.0, True))
        for name, model in ((BEHAVIOUR, self.sequential), (COOCCURRENCE, self.cooccurrence)):
            if name in self.schema.dense:
                channels.append(ChannelStatus(name, self.schema.dense[name], 0.0,
                                              model is not None))
        return EngineInfo(version=__version__, device=self.device, store=self.store.description,
                          item_count=self.store.count(), models=models, channels=channels)

    def close(self) -> None:
        """Flush and close the stores."""
        self.users.close()
        self.store.close()


def _rows(mask: np.ndarray, values: Sequence, encode: Callable, dim: int) -> np.ndarray:  # type: ignore[type-arg]
    """Encode only the rows where ``mask`` is set; the others stay zero (missing)."""
    out = np.zeros((len(values), dim), dtype=np.float32)
    idx = np.flatnonzero(mask)
    if len(idx):
        out[idx] = encode([values[i] for i in idx])
    return out
