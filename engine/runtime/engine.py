"""The Engine facade: encoders, fuser, store, behaviour models and LLM wired from one config.

Data flows one way: the service and the CLI call this module; it calls the
search and recommend pipelines, the vectoriser and the stores. Everything here
speaks domain types.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from engine import __version__
from engine.behaviour import BehaviourModel, ServedModels
from engine.config import EngineConfig, RecommendSettings
from engine.domain import (
    BEHAVIOUR,
    BEHAVIOUR_CHANNELS,
    CLIP,
    COOCCURRENCE,
    DEFAULT_TENANT,
    FUSED,
    LEXICAL,
    TEXT,
    ChannelStatus,
    EngineInfo,
    Erasure,
    Event,
    InvalidInput,
    ItemInput,
    ItemRecord,
    ModelStatus,
    ModelUnavailable,
    RecommendRequest,
    RecommendResult,
    SearchRequest,
    SearchResult,
    StoredItem,
)
from engine.encoders import (
    LexicalEncoder,
    LexicalSettings,
    clip_embedding_dim,
    create_text_encoder,
    resolve_device,
)
from engine.encoders.fusion import VectorFuser
from engine.encoders.vectoriser import Vectoriser
from engine.recommend import ProfileBook, RecommendChannels, Recommender, RecordOutcome
from engine.recommend.tuning import TunedFusion
from engine.rerank.explain import Explainer
from engine.rerank.stage import Reranker, RerankStage
from engine.runtime.models import (
    Models,
    load_clip,
    load_cooccurrence,
    load_fusion,
    load_llm_reranker,
    load_sequential,
    reason_writer,
)
from engine.runtime.rerankers import load_trained_reranker, zero_shot
from engine.search import HybridRetriever, SearchPipeline
from engine.store import UserStore, VectorSchema, VectorStore, open_store, open_user_store

log = logging.getLogger(__name__)


class Engine:
    """Encodes items and queries, stores items, and answers searches through the pipeline."""

    def __init__(self, config: EngineConfig, models: Models, *, store: VectorStore | None = None,
                 users: UserStore | None = None, device: str = "cpu",
                 fusion: TunedFusion | None = None, fusion_status: ModelStatus | None = None
                 ) -> None:
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
        analysers = {LEXICAL: models.lexical.analyser} if models.lexical is not None else {}
        self.schema = VectorSchema(dense={FUSED: self.fuser.dim, **dims,
                                          **behaviour_dims(config)}, sparse=sparse,
                                   analysers=analysers)
        self.behaviour = ServedModels()
        """Behaviour models by the named vector they fill, each serving its own tenant only."""
        for name, model in ((BEHAVIOUR, models.sequential), (COOCCURRENCE, models.cooccurrence)):
            if model is not None:
                self._check_dim(name, model)
                self.behaviour.serve(name, model, model.tenant)
        self._store = store if store is not None else open_store(config.store, self.schema)
        batching = config.query_batching
        if batching.enabled and batching.store:
            self._store.batch_searches(window_ms=batching.window_ms, max_batch=batching.max_batch)
        self.users = users if users is not None else open_user_store(
            config.store, {"profile": self.fuser.dim})
        self.vectoriser = Vectoriser(
            text=models.text, clip=models.clip, lexical=models.lexical, fuser=self.fuser,
            image_weight=config.clip.image_weight,
            clip_off_reason=self.clip_status.reason or "CLIP is disabled",
            batching=config.query_batching)
        off = models.reranker_status.reason if models.reranker_status else "re-ranking is off"
        rerank = RerankStage(zero_shot(models.reranker, config.rerank.search_blend_weight), off,
                             config.rerank)
        explainer = Explainer(models.lexical, reason_writer(models.reranker))
        self.pipeline = SearchPipeline(self.vectoriser,
                                       HybridRetriever(self._store, config.retrieval),
                                       rerank, explainer)
        self.profiles = ProfileBook(self.users, self._store, config.profiles,
                                    content_vector=config.recommend.content_vector)
        self.fusion, self.fusion_status = fusion, fusion_status
        tuned = {fusion.tenant: fusion.apply(config.recommend)} if fusion else {}
        channels = RecommendChannels(self.profiles, self._store, self.vectoriser, self.behaviour,
                                     config.recommend, tuned=tuned)
        self.recommender = Recommender(
            channels, RerankStage(zero_shot(models.reranker,
                                            config.rerank.zero_shot_recommend_weight),
                                  off, config.rerank),
            explainer, config.recommend)
        self.trained_reranker_status: ModelStatus | None = None

    def use_reranker(self, reranker: Reranker | None, status: ModelStatus,
                     tenant: str = DEFAULT_TENANT) -> None:
        """Recommend for ``tenant`` with a trained re-ranker (None keeps the zero-shot one);
        other tenants keep the zero-shot one (it learned ``tenant``'s log); info shows it."""
        if reranker is not None:
            stage = self.recommender.rerank
            self.recommender.tenant_rerank = {
                tenant: RerankStage(reranker, stage.off_reason, stage.settings)}
        self.trained_reranker_status = status

    def _check_dim(self, name: str, model: BehaviourModel) -> None:
        """A loaded behaviour model must fill its named vector exactly."""
        expected = self.schema.dense.get(name)
        if model.vector_dim != expected:
            raise ModelUnavailable(
                f"the {name} model has {model.vector_dim}-d vectors but the store expects "
                f"{expected} (behaviour.dim + 1, behaviour.cooccurrence_dim + 1); retrain it "
                f"with mmrec train-seq or change the behaviour section of the config")

    @property
    def sequential(self) -> BehaviourModel | None:
        """The SASRec behaviour model, when one is loaded (whichever tenant it serves)."""
        return self.behaviour.get(BEHAVIOUR)

    @property
    def cooccurrence(self) -> BehaviourModel | None:
        """The co-occurrence model, when one is loaded (whichever tenant it serves)."""
        return self.behaviour.get(COOCCURRENCE)

    def recommend_settings(self, tenant: str) -> RecommendSettings:
        """The recommend section ``tenant``'s requests start from: with the fusion tuned for
        that tenant over it, when train-seq tuned one for it (a request's own knobs still win)."""
        return self.recommender.channels.settings_for(tenant)

    @property
    def store(self) -> VectorStore:
        """Where items live; assigning another store (a benchmark's scratch one) rewires search."""
        return self._store

    @store.setter
    def store(self, store: VectorStore) -> None:
        self._store = store
        self.pipeline.retriever.store = store
        self.profiles.items = store
        self.recommender.channels.store = store

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
        fusion, fusion_status = load_fusion(config)
        models = Models(text_encoder, clip_encoder, clip_status, clip_dim, lexical, reranker,
                        reranker_status, sequential, sequential_status, cooccurrence)
        engine = cls(config, models, store=store, device=device, fusion=fusion,
                     fusion_status=fusion_status)
        if load_reranker:
            engine.use_reranker(*load_trained_reranker(config, device, engine.store))
        return engine

    # ------------------------------------------------------------------ items
    def encode_items(self, items: Sequence[ItemInput]) -> list[StoredItem]:
        """Per-channel, fused and lexical vectors for a batch of items, with behaviour vectors.

        Each item needs text or an image that some enabled channel can read;
        otherwise InvalidInput names the item. Items a loaded behaviour model
        knows get its vector too, so re-indexing keeps them; only items of the
        tenant the model serves, as ids of different tenants name different items.
        """
        stored = []
        for item, vectors in zip(items, self.vectoriser.items(items), strict=True):
            vectors.update(self.behaviour.vectors_of(item.record.id, item.record.tenant))
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
    def record_events(self, events: Sequence[Event]) -> RecordOutcome:
        """Fold interaction events into their users' profiles (bad events are refused)."""
        return self.profiles.record(events)

    def recommend(self, request: RecommendRequest) -> RecommendResult:
        """Items for a user and/or example items (see ``engine.recommend``)."""
        return self.recommender.recommend(request)

    def delete_user(self, user_id: str, tenant: str) -> Erasure:
        """Erase everything stored about a user."""
        return self.profiles.delete(user_id, tenant=tenant)

    def use_behaviour(self, name: str, model: BehaviourModel, tenant: str) -> int:
        """Serve a newly trained behaviour model: store its item vectors, query with it.

        ``name`` is the named vector it fills (``behaviour`` for SASRec,
        ``cooccurrence``); ``tenant`` is the one whose log trained it, the only
        tenant whose items get its vectors and whose requests it answers (it
        replaces the channel's model for any other tenant). Returns how many
        stored items received a vector.
        """
        if name not in BEHAVIOUR_CHANNELS:
            raise InvalidInput(f"no behaviour channel {name!r}; one of {BEHAVIOUR_CHANNELS}")
        if model.vector_dim != self.schema.dense.get(name):
            raise InvalidInput(
                f"the model's {name} vectors have {model.vector_dim} values; the store expects "
                f"{self.schema.dense.get(name)} (see the behaviour section of the config)")
        ids, vectors = model.item_vectors()
        updated = 0
        for start in range(0, len(ids), 512):
            chunk = dict(zip(ids[start:start + 512], vectors[start:start + 512], strict=True))
            updated += self.store.set_vectors(chunk, tenant=tenant, using=name)
        self.behaviour.serve(name, model, tenant)
        return updated

    # ------------------------------------------------------------------- info
    def info(self) -> EngineInfo:
        """Models, channels and item count, for `mmrec info` and the GetInfo RPC."""
        models = [ModelStatus("text", self.text.name, True), self.clip_status]
        if self.lexical is not None:
            models.append(ModelStatus("lexical", self.lexical.name, True))
        if self.models.reranker_status is not None:
            models.append(self.models.reranker_status)
        if self.trained_reranker_status is not None:
            models.append(self.trained_reranker_status)
        models.extend(self._behaviour_statuses())
        if self.fusion_status is not None:
            models.append(self.fusion_status)
        enabled = {CLIP: self.clip is not None, TEXT: True}
        channels = [ChannelStatus(FUSED, self.fuser.dim, 0.0, True)] + [
            ChannelStatus(name, dim, float(self.fuser.weights[name]), enabled[name])
            for name, dim in self.fuser.dims.items()
        ]
        if self.lexical is not None:
            channels.append(ChannelStatus(LEXICAL, 0, 0.0, True))
        for name in BEHAVIOUR_CHANNELS:
            if name in self.schema.dense:
                channels.append(ChannelStatus(name, self.schema.dense[name], 0.0,
                                              name in self.behaviour))
        return EngineInfo(version=__version__, device=self.device, store=self.store.description,
                          item_count=self.store.count(), models=models, channels=channels)

    def _behaviour_statuses(self) -> list[ModelStatus]:
        """Each behaviour channel's model and the tenant it serves (``details["tenant"]``)."""
        statuses = []
        loaded = self.models.sequential_status
        for name, label in ((BEHAVIOUR, "SASRec"), (COOCCURRENCE, "co-occurrence")):
            tenant = self.behaviour.tenant_of(name)
            if tenant is not None:
                if name == BEHAVIOUR and loaded is not None and loaded.loaded:
                    label = loaded.name
                statuses.append(ModelStatus(name, label, True, details={"tenant": tenant}))
            elif name == BEHAVIOUR and loaded is not None:
                statuses.append(loaded)
        return statuses

    def close(self) -> None:
        """Flush and close the stores."""
        self.users.close()
        self.store.close()



def behaviour_dims(config: EngineConfig) -> dict[str, int]:
    """The behaviour channels' vector sizes in the store (each model's dim + 1: MIPS)."""
    settings = config.behaviour
    if not settings.enabled:
        return {}
    dims = {BEHAVIOUR: settings.dim + 1}
    if settings.cooccurrence_dim:
        dims[COOCCURRENCE] = settings.cooccurrence_dim + 1
    return dims
