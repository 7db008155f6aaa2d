"""Loading the engine's models from the configuration, each optional one with its status.

The text encoder is required; CLIP, the LLM re-ranker and the behaviour models
(SASRec, co-occurrence) are optional: when one cannot be loaded it is off, one
log line says why, and ``Engine.info`` reports it. Random weights are never
substituted unless the configuration asks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialModel
from engine.config import EngineConfig
from engine.domain import BEHAVIOUR, CLIP, ModelStatus, ModelUnavailable
from engine.encoders import ClipEncoder, LexicalEncoder, TextEncoder, create_clip_encoder
from engine.recommend.tuning import FUSION_FILE, TunedFusion
from engine.rerank.explain import WriteReason

if TYPE_CHECKING:  # the LLM stack (transformers) is imported only when a re-ranker loads
    from engine.rerank import LlmReranker

log = logging.getLogger(__name__)

FUSION = "fusion"
"""The model role of the tuned fusion settings in ``Engine.info``."""


@dataclass(frozen=True, slots=True)
class Models:
    """The loaded models and, for each optional one that is off, why."""

    text: TextEncoder
    clip: ClipEncoder | None
    clip_status: ModelStatus
    clip_dim: int | None
    lexical: LexicalEncoder | None = None
    reranker: LlmReranker | None = None
    reranker_status: ModelStatus | None = None
    sequential: SequentialModel | None = None
    sequential_status: ModelStatus | None = None
    cooccurrence: CooccurrenceModel | None = None


def load_clip(config: EngineConfig, device: str) -> tuple[ClipEncoder | None, ModelStatus]:
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


def load_llm_reranker(config: EngineConfig, device: str
                      ) -> tuple[LlmReranker | None, ModelStatus]:
    """The LLM re-ranker, or None with the reason it is off (logged once)."""
    from engine.rerank import LlmReranker, RerankerSpec

    settings = config.rerank
    if not settings.model:
        log.info("LLM re-ranking off: no rerank.model configured")
        return None, ModelStatus("llm", "", False, "no rerank.model configured")
    try:
        spec = RerankerSpec.from_settings(settings, data_dir=Path(config.store.data_dir),
                                          device=device)
        reranker = LlmReranker.from_spec(spec)
    except ModelUnavailable as exc:
        log.warning("LLM re-ranking off: %s", exc)
        return None, ModelStatus("llm", settings.model, False, str(exc))
    return reranker, ModelStatus("llm", reranker.name, True)


def load_sequential(config: EngineConfig, device: str
                     ) -> tuple[SequentialModel | None, ModelStatus | None]:
    """The trained behaviour model when one is saved; the engine works without it.

    The model serves the tenant its ``model.json`` names (the default tenant when
    it names none); the status says which.
    """
    if not config.behaviour.enabled:
        return None, ModelStatus(BEHAVIOUR, "", False, "disabled in the configuration")
    folder = config.behaviour_path()
    if not folder.exists():
        return None, ModelStatus(BEHAVIOUR, "", False,
                                 f"no model trained yet ({folder}); run mmrec train-seq")
    try:
        model = SequentialModel.load(folder, device=device)
    except ModelUnavailable as exc:
        log.warning("behaviour channel off: %s", exc)
        return None, ModelStatus(BEHAVIOUR, str(folder), False, str(exc))
    return model, ModelStatus(BEHAVIOUR, f"SASRec at {folder}", True,
                              details={"tenant": model.tenant})


def load_cooccurrence(config: EngineConfig) -> CooccurrenceModel | None:
    """The saved co-occurrence embeddings, when ``mmrec train-seq`` wrote them.

    They serve the tenant ``cooccurrence.json`` names (the default one when it names none).
    """
    if not (config.behaviour.enabled and config.behaviour.cooccurrence_dim):
        return None
    folder = config.behaviour_path()
    if not (folder / "cooccurrence.json").exists():
        return None
    try:
        return CooccurrenceModel.load(folder)
    except ModelUnavailable as exc:
        log.warning("co-occurrence channel off: %s", exc)
        return None


def load_fusion(config: EngineConfig) -> tuple[TunedFusion | None, ModelStatus | None]:
    """The fusion settings ``mmrec train-seq`` chose on validation, when the engine applies them.

    Returned only when they apply (``recommend.tuned``); the status says either
    way what was chosen (``details``) or why nothing is. None and None when no
    behaviour model was ever trained here.
    """
    path = config.behaviour_path() / FUSION_FILE
    if not config.behaviour.enabled or not path.parent.exists():
        return None, None
    if not path.exists():
        return None, ModelStatus(FUSION, "", False, f"not tuned (no {path}): the recommend "
                                 f"section's settings apply; mmrec train-seq tunes them")
    try:
        tuned = TunedFusion.load(path)
    except ModelUnavailable as exc:
        log.warning("tuned fusion off: %s", exc)
        return None, ModelStatus(FUSION, str(path), False, str(exc))
    name = f"tuned on validation ({path})"
    if not config.recommend.tuned:
        return None, ModelStatus(FUSION, name, False, "recommend.tuned = false: the recommend "
                                 "section's settings apply", details=tuned.details())
    return tuned, ModelStatus(FUSION, name, True, details=tuned.details())


def reason_writer(reranker: LlmReranker | None) -> WriteReason | None:
    """Reasons are written by the re-ranker's model, when there is one."""
    if reranker is None:
        return None
    from engine.rerank import ReasonWriter

    return ReasonWriter(reranker.model, reranker.tokenizer)
