"""LLM re-ranking and generated reasons (docs/ARCHITECTURE.md, "Re-ranking").

    from engine.rerank import ListwiseReranker, LlmReranker, RerankerSpec, load_causal_lm

    spec = RerankerSpec.from_settings(config.rerank, data_dir=data_dir, device="cpu")
    zero_shot = LlmReranker.from_spec(spec)            # "smollm2" resolves via the registry
    result = zero_shot.score("a cute kitten", ["A white kitten", "A fire truck"], deadline=...)
    model, tokenizer, name = load_causal_lm(spec)
    listwise = ListwiseReranker(model, tokenizer)      # one pass over K labelled candidates
    result = listwise.score(RerankQuery(history=records), candidates)

Loading converts a GGUF file once into safetensors (:mod:`engine.rerank.loading`); the
zero-shot scorer is contrastive log-likelihood with shared prompt caches
(:mod:`engine.rerank.llm`); the trained one is listwise (:mod:`engine.rerank.listwise`,
trained by :mod:`engine.rerank.training`, stored by :mod:`engine.rerank.artifact`); reasons
are one checked sentence (:mod:`engine.rerank.reasons`).
"""

from engine.rerank.listwise import ListwiseReranker
from engine.rerank.llm import LlmReranker
from engine.rerank.loading import RerankerSpec, default_cache_dir, load_causal_lm
from engine.rerank.reasons import ReasonWriter
from engine.rerank.stage import Blend, RerankQuery, RerankScores, RerankStage, merge_order

__all__ = [
    "Blend",
    "ListwiseReranker",
    "LlmReranker",
    "ReasonWriter",
    "RerankQuery",
    "RerankScores",
    "RerankStage",
    "RerankerSpec",
    "default_cache_dir",
    "load_causal_lm",
    "merge_order",
]
