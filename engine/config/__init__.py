"""The one configuration object of mmrec.

Values come, highest priority first, from keyword arguments, ``MMREC_*``
environment variables (nested with ``__``: ``MMREC_SERVICE__PORT=50052``), a
TOML file, and the defaults below. Only this module reads the environment; the
resulting :class:`EngineConfig` is passed down explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engine.config.batching import QueryBatchingSettings
from engine.config.service import (
    LOOPBACK_NAMES,
    AuthSettings,
    LimitsSettings,
    ServiceSettings,
    is_loopback,
)

Pooling = Literal["mean", "last_token", "cls"]


def user_cache_dir() -> Path:
    """The per-user cache root: ``$XDG_CACHE_HOME`` when set to an absolute path (as the XDG
    base directory spec requires), else ``~/.cache``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


class ClipSettings(BaseModel):
    """The CLIP channel: one open_clip model embedding images and texts in one space."""

    enabled: bool = True
    model: str = Field("ViT-B-32", description="open_clip architecture or registry name.")
    pretrained: str | None = Field(
        "laion2b_s34b_b79k",
        description="open_clip pretrained tag, or a path to a local weights file.",
    )
    image_weight: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of the image embedding in an item's CLIP part (the rest is CLIP text).",
    )
    batch_size: int = Field(32, ge=1)
    random_weights: bool = Field(
        False,
        description=(
            "Build the architecture with random weights instead of loading any. Only for tests "
            "and speed benchmarks (cost does not depend on weights); never used by the demo."
        ),
    )

    @field_validator("pretrained")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        """TOML and environment variables cannot say None: an empty string means no weights."""
        return value or None


class TextEncoderSettings(BaseModel):
    """The LLM/transformer text channel."""

    model: str = Field(
        "all-MiniLM-L6-v2",
        description="Registry name, Hugging Face model id, or local folder.",
    )
    pooling: Pooling | None = Field(None, description="Overrides the registry's pooling.")
    query_prefix: str | None = Field(None, description="Overrides the registry's query prefix.")
    max_length: int = Field(256, ge=8)
    batch_size: int = Field(64, ge=1)


class ChannelWeights(BaseModel):
    """Weight of each dense channel inside the fused vector.

    See docs/ARCHITECTURE.md, 'The fused vector'.
    """

    clip: float = Field(1.0, ge=0.0)
    text: float = Field(1.0, ge=0.0)


class RetrievalSettings(BaseModel):
    """Hybrid retrieval: which channels are searched, how many candidates each brings, fusion."""

    fusion: Literal["rrf", "dbsf"] = "rrf"
    rrf_k: int = Field(60, ge=1, description="RRF's k: score = sum of weight / (k + rank).")
    candidates: int = Field(100, ge=1, le=10_000, description="Candidates per channel.")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"fused": 1.0, "clip": 1.0, "text": 1.0, "lexical": 1.0},
        description="Per-channel weight in RRF; 0 switches a channel off.",
    )
    lexical: bool = Field(True, description="Index and search BM25 term weights.")
    lexical_language: str = "english"


class RerankSettings(BaseModel):
    """The LLM re-ranker and explanation writer."""

    enabled: bool = Field(
        False,
        description=(
            "Default for requests that leave `rerank` unset. Off: on the Tux Paint task "
            "SmolLM2-135M re-ranking lowered nDCG@10 from 0.561 to 0.545 "
            "(benchmarks/results/retrieval_quality.md); ask for it per request."
        ),
    )
    model: str = Field(
        "smollm2",
        description="A packaged model's name (smollm2, gemma3-270m: found in "
        "<store.data_dir>/models/<name>/ or else in models_dir, never relative to the working "
        "directory), a .gguf file, a local Hugging Face folder, or a cached HF causal LM id; "
        "empty switches the LLM off.",
    )
    models_dir: Path | None = Field(
        None,
        description="The per-user cache of packaged models, which `make models` fills; "
        "unset: $XDG_CACHE_HOME/mmrec/models, else ~/.cache/mmrec/models.",
    )
    top_k: int = Field(20, ge=1, le=200, description="Top fused candidates the LLM re-scores.")
    budget_ms: int = Field(1500, ge=0, description="Default time budget per request.")
    batch_size: int = Field(16, ge=1)
    max_candidate_tokens: int = Field(64, ge=4)
    max_query_tokens: int = Field(128, ge=4)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="LLM compute dtype; auto: float32 on CPU, bf16 (fp16) on CUDA.")
    neutral_cache_size: int = Field(
        10_000, ge=0,
        description="Items whose query-independent LLM term is kept between requests.")
    trained: bool = Field(
        True, description="Recommend with the listwise re-ranker `mmrec train-rerank` "
        "trained, when one is saved and still matches the catalog, first stage and LLM.")
    trained_path: Path | None = Field(
        None, description="Folder of the trained re-ranker; unset: <store.data_dir>/models/rerank.")
    prefix_cache_size: int = Field(
        32, ge=0, description="Users whose prompt prefix (history) key/value cache the trained "
        "re-ranker keeps between requests (about 10 MB each for SmolLM2).")
    int8: bool = Field(
        False, description="Serve the trained re-ranker with int8 linear weights on the CPU "
        "(PyTorch dynamic quantisation, after the LoRA merge); ignored on CUDA. Its speed and "
        "ranking agreement are in benchmarks/results/rerank_throughput.md.")
    search_blend_weight: float = Field(
        0.0, ge=0.0, le=1.0, description="Weight of the zero-shot LLM's rank against the "
        "fused rank in search (0: fused order). 1.0 is the LLM's order alone, as before the "
        "blend existed. 0 because `python -m benchmarks.retrieval_quality` chose it on a "
        "validation half of its queries: no weight beat the fused order by 2 SE "
        "(benchmarks/results/retrieval_quality.md).")
    zero_shot_recommend_weight: float = Field(
        1.0, ge=0.0, le=1.0, description="The same blend weight for recommendations when no "
        "trained re-ranker is loaded (zero-shot, at chance on MovieLens).")

    def models_path(self) -> Path:
        """Where packaged models are looked for after the data dir: ``models_dir``, or the
        per-user cache as the environment says now (read here, not at import)."""
        return self.models_dir or user_cache_dir() / "mmrec" / "models"


class StoreSettings(BaseModel):
    """Where vectors live: an embedded Qdrant shard (default) or a Qdrant server."""

    data_dir: Path = Path(".mmrec/data")
    url: str | None = Field(None, description="Qdrant server URL; unset means the embedded store.")
    api_key: str | None = None
    collection: str = "mmrec_items"
    shard_number: int | None = Field(
        None, ge=1, description="Shards of a collection mmrec creates on a Qdrant server "
        "(unset: the server's default); spread over the cluster's nodes.")
    replication_factor: int | None = Field(
        None, ge=1, description="Copies of each shard on a Qdrant cluster (unset: the "
        "server's default, 1); 2 keeps serving when a node is lost.")
    hnsw_ef: int = Field(128, ge=4)
    quantization: Literal["none", "int8", "binary"] = Field(
        "none", description="Quantization of the dense vectors, fixed when the shard or "
        "collection is created: int8 (Qdrant's scalar quantization, 4x smaller) or binary "
        "(1 bit per value, 32x smaller; for large embeddings centred near zero). The "
        "quantized vectors stay in RAM and the float32 originals go to disk (memory-mapped). "
        "Recall and memory against float32: benchmarks/results/quantisation.md.")
    quantization_oversampling: float = Field(
        2.0, ge=1.0, description="With quantization: candidates found on the quantized "
        "vectors per result asked, before rescoring.")
    quantization_rescore: bool = Field(
        True, description="With quantization: re-score the oversampled candidates with the "
        "float32 originals (exact cosine order among them; reads the originals from disk).")
    optimize_after: int = Field(
        5000, ge=1,
        description="Service-side upserts after which a background HNSW build starts.",
    )
    retry_attempts: int = Field(
        4, ge=1, description="Calls to a Qdrant server (store.url) in all, the first included, "
        "for a store call that is safe to repeat (reads; upserts, deletes and payload sets by "
        "point id) and failed in transport (refused connection, UNAVAILABLE, 502-504); 1: "
        "never retry. Then the request fails UNAVAILABLE naming the server.")
    retry_base_ms: float = Field(
        50.0, gt=0.0, description="Longest wait before the first retry; each later one doubles "
        "(exponential backoff), and the wait is drawn uniformly below it (full jitter), so "
        "replicas that lost the server together do not retry in lockstep.")
    retry_max_ms: float = Field(1000.0, gt=0.0, description="Cap of one wait between retries.")
    retry_total_ms: float = Field(
        5000.0, ge=0.0, description="No retry starts past this long after the first attempt; "
        "a request's own gRPC deadline (less retry_deadline_margin_ms) bounds it further.")
    retry_deadline_margin_ms: float = Field(
        50.0, ge=0.0, description="Time kept before a request's deadline to answer with the "
        "store's error (UNAVAILABLE) rather than let the deadline pass.")


class ProfileSettings(BaseModel):
    """How interaction events become a user profile (see ``engine.recommend.profiles``)."""

    kinds: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "add_to_cart": 3.0,
                                 "purchase": 4.0, "rating": 1.0, "like": 3.0, "dislike": -2.0},
        description="Event kinds accepted and the weight of each in the profile; a negative "
        "weight pushes the profile away from the item (and makes it a negative example).",
    )
    value_scale: dict[str, float] = Field(
        default_factory=lambda: {"rating": 5.0},
        description="Kinds whose weight is multiplied by value / scale (a 5-star rating "
        "counts fully); other kinds ignore the value.",
    )
    half_life_events: float = Field(
        1.0, gt=0.0,
        description="An event counts half once this many newer events came after it. Recency "
        "carries most of the signal on MovieLens: content-only NDCG@10 on validation was "
        "0.017 / 0.019 / 0.022 at half-lives 3 / 2 / 1 and 0.029 for the last item alone "
        "(MiniLM, leave-one-out, full ranking).")
    half_life_days: float | None = Field(
        None, gt=0.0, description="Also halve an event's weight per this many days; unset: off.")
    max_events: int = Field(
        200, ge=1, description="Events kept per user (as many as SASRec reads); older ones "
        "leave the history but still count (decayed) in the profile vector. Each event "
        "rewrites the user, so this bounds the cost of an event.")
    recent: int = Field(
        20, ge=1, description="Latest positive items used as examples by the recommend "
        "strategies and shown to the LLM and in explanations.")
    cache_size: int = Field(10_000, ge=0, description="Profiles kept in memory between calls.")


class RecommendSettings(BaseModel):
    """Recommendations from history (see ``engine.recommend``)."""

    strategy: Literal["profile", "average_vector", "best_score", "sum_scores"] = Field(
        "profile", description="How the history becomes the content query: nearest to the "
        "profile vector, or Qdrant's recommend strategies over the recent items.")
    content_vector: str = Field("fused", description="Named vector the content query uses.")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"behaviour": 1.0, "cooccurrence": 2.0, "fused": 0.25,
                                 "text": 0.3, "lexical": 0.3},
        description="Per-channel RRF weight; 'fused' is the history's content channel. "
        "Behaviour, co-occurrence and fused chosen on MovieLens-100k validation with RRF k=10 "
        "(benchmarks/results/recommend_quality.md).")
    fusion: Literal["rrf", "dbsf"] = Field(
        "rrf", description="How the channels' candidate lists become one (Qdrant's fusion); "
        "DBSF ignores the weights (a channel is only on or off). On MovieLens validation "
        "RRF k=10 beat k=60 and DBSF by 0.005-0.006 NDCG@10.")
    rrf_k: int = Field(10, ge=1, description="RRF's k: smaller lets each channel's top "
                       "items count for more (10 chosen on MovieLens validation).")
    candidates: int = Field(200, ge=1, le=10_000, description="Candidates per channel.")
    include_seen: bool = Field(False, description="Default for requests: return seen items.")
    tuned: bool = Field(
        True, description="Use the weights, RRF k and fusion that `mmrec train-seq` chose on "
        "the catalog's own validation split (fusion.json beside the behaviour models) over "
        "the ones above; a request's own still win. False: always the ones above.")


class BehaviourSettings(BaseModel):
    """The behaviour channels trained by ``mmrec train-seq``: SASRec and co-occurrence."""

    enabled: bool = Field(True, description="Keep a 'behaviour' vector per item and use the "
                          "model when one is trained.")
    dim: int = Field(64, ge=4, description="Model width; the stored vector has dim + 1 values.")
    cooccurrence_dim: int = Field(
        256, ge=0, description="Width of the co-occurrence (item-kNN) embeddings trained "
        "beside the model; the stored vector has dim + 1 values; 0 switches the channel off.")
    cooccurrence_decay: float = Field(
        0.5, gt=0.0, le=1.0, description="Weight of a history item per newer event in the "
        "co-occurrence query (chosen on MovieLens validation: 0.5).")
    path: Path | None = Field(
        None, description="Folder of the trained model; unset: <store.data_dir>/models/sequential.")
    tune_fusion: bool = Field(
        True, description="After training, choose the recommend fusion (per-channel weights, "
        "0 = off; RRF k; RRF or DBSF) on the validation split with models that did not see "
        "the held-out items, and save it as fusion.json beside the models.")
    tune_users: int = Field(
        3000, ge=1, description="Most validation users the fusion search scores (a fixed "
        "random sample above that): its cost grows with them.")


class EngineConfig(BaseSettings):
    """Everything the engine needs to start, in one object."""

    model_config = SettingsConfigDict(
        env_prefix="MMREC_", env_nested_delimiter="__", extra="forbid", toml_file=None,
    )

    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1'.")
    log_level: str = "INFO"
    clip: ClipSettings = ClipSettings()
    text_encoder: TextEncoderSettings = TextEncoderSettings()
    query_batching: QueryBatchingSettings = QueryBatchingSettings()
    channels: ChannelWeights = ChannelWeights()
    retrieval: RetrievalSettings = RetrievalSettings()
    rerank: RerankSettings = RerankSettings()
    profiles: ProfileSettings = ProfileSettings()
    recommend: RecommendSettings = RecommendSettings()
    behaviour: BehaviourSettings = BehaviourSettings()
    store: StoreSettings = StoreSettings()
    service: ServiceSettings = ServiceSettings()
    auth: AuthSettings = AuthSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments beat the environment, which beats the TOML file."""
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    def rerank_path(self) -> Path:
        """Where ``mmrec train-rerank`` writes the trained re-ranker and the engine looks."""
        return self.rerank.trained_path or Path(self.store.data_dir) / "models" / "rerank"

    def behaviour_path(self) -> Path:
        """Where ``mmrec train-seq`` writes the behaviour models and the engine looks for them."""
        return self.behaviour.path or Path(self.store.data_dir) / "models" / "sequential"

    def auth_enabled(self) -> bool:
        """Whether the service requires API keys: ``auth.enabled`` when set, else on exactly
        when ``service.host`` is not loopback (:func:`is_loopback`)."""
        if self.auth.enabled is not None:
            return self.auth.enabled
        return not is_loopback(self.service.host)

    def key_path(self) -> Path:
        """The API key file ``mmrec keys`` writes and the service reads."""
        return self.auth.key_file or Path(self.store.data_dir) / "keys.json"

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> EngineConfig:
        """Read the configuration from an optional TOML file, the environment and overrides."""
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        with_file = {**cls.model_config, "toml_file": path}
        bound = type(cls.__name__, (cls,), {"model_config": with_file})
        return cls.model_validate(bound(**overrides).model_dump())


__all__ = [
    "LOOPBACK_NAMES",
    "AuthSettings",
    "BehaviourSettings",
    "ChannelWeights",
    "ClipSettings",
    "EngineConfig",
    "LimitsSettings",
    "Pooling",
    "ProfileSettings",
    "QueryBatchingSettings",
    "RecommendSettings",
    "RerankSettings",
    "RetrievalSettings",
    "ServiceSettings",
    "StoreSettings",
    "TextEncoderSettings",
    "is_loopback",
    "user_cache_dir",
]
