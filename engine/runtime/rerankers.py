"""Which re-ranker each path gets: the trained listwise one for recommend, zero-shot otherwise.

Search always uses the zero-shot scorer (the trained one learned from
interactions, not queries), with ``rerank.search_blend_weight``. Recommend uses
the re-ranker `mmrec train-rerank` saved when it loads and still matches the
LLM, catalog and first stage; otherwise the zero-shot scorer with
``rerank.zero_shot_recommend_weight``, and ``mmrec info`` says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from engine.config import EngineConfig
from engine.domain import DEFAULT_TENANT, ModelStatus, ModelUnavailable
from engine.rerank.stage import Blend, Reranker
from engine.store import VectorStore

if TYPE_CHECKING:  # the LLM stack (transformers) is imported only when a re-ranker loads
    from engine.rerank import LlmReranker
    from engine.rerank.artifact import Provenance

log = logging.getLogger(__name__)
ROLE = "reranker"


def zero_shot(llm: LlmReranker | None, weight: float) -> Reranker | None:
    """The zero-shot scorer with a blend weight, when the LLM loaded."""
    if llm is None:
        return None
    from engine.rerank.zero_shot import ZeroShotReranker

    return ZeroShotReranker(llm, Blend(weight))


def load_trained_reranker(config: EngineConfig, device: str, store: VectorStore
                          ) -> tuple[Reranker | None, ModelStatus, str]:
    """The trained listwise re-ranker for recommend, or None and why (logged once), and the
    tenant it serves (the one whose log trained it)."""
    folder = config.rerank_path()
    if not config.rerank.trained:
        return None, ModelStatus(ROLE, "", False, "disabled in the configuration"), \
            DEFAULT_TENANT
    if not config.rerank.model or not (folder / "rerank.json").is_file():
        return None, ModelStatus(ROLE, "", False, f"no re-ranker trained yet ({folder}); "
                                 "run mmrec train-rerank"), DEFAULT_TENANT
    from engine.rerank.artifact import RerankArtifact
    from engine.rerank.loading import RerankerSpec
    from engine.rerank.trained import describe, load_trained

    tenant = DEFAULT_TENANT
    try:
        trained = RerankArtifact.load(folder).provenance
        tenant = trained.tenant or DEFAULT_TENANT
        current = current_provenance(config, store, tenant, base_fingerprint="")
        spec = RerankerSpec.from_settings(config.rerank, data_dir=Path(config.store.data_dir),
                                          device=device)
        reranker, artifact = load_trained(folder, spec, current,
                                          prefix_cache_size=config.rerank.prefix_cache_size,
                                          int8=config.rerank.int8)
    except ModelUnavailable as exc:
        log.warning("trained re-ranker off: %s", exc)
        return None, ModelStatus(ROLE, str(folder), False, str(exc)), tenant
    return reranker, ModelStatus(ROLE, reranker.name, True, details=describe(artifact)), tenant


def current_provenance(config: EngineConfig, store: VectorStore, tenant: str, *,
                       base_fingerprint: str) -> Provenance:
    """What a re-ranker trained now would be valid with (the base fingerprint given)."""
    from engine.rerank.artifact import Provenance, folder_fingerprint

    return Provenance(base_model=config.rerank.model, base_fingerprint=base_fingerprint,
                      collection=config.store.collection, tenant=tenant,
                      catalog_items=store.count(tenant),
                      first_stage=folder_fingerprint(config.behaviour_path()))
