"""LLM re-ranking and generated reasons (docs/ARCHITECTURE.md, "Re-ranking").

    from engine.rerank import LlmReranker, ReasonWriter, RerankerSpec

    reranker = LlmReranker.from_spec(RerankerSpec(model=".../SmolLM2-135M-Instruct.Q4_1.gguf",
                                                  cache_dir=data_dir / "models" / "smollm2"))
    result = reranker.score("a cute kitten", ["A white kitten", "A fire truck"], deadline=...)
    reasons = ReasonWriter(reranker.model, reranker.tokenizer)

Loading converts a GGUF file once into safetensors (:mod:`engine.rerank.loading`);
scoring is contrastive log-likelihood with shared prompt caches
(:mod:`engine.rerank.llm`); reasons are one greedy sentence
(:mod:`engine.rerank.reasons`).
"""

from engine.rerank.llm import LlmReranker
from engine.rerank.loading import RerankerSpec, default_cache_dir, load_causal_lm
from engine.rerank.reasons import ReasonWriter
from engine.rerank.stage import RerankScores, RerankStage, merge_order

__all__ = [
    "LlmReranker",
    "ReasonWriter",
    "RerankScores",
    "RerankStage",
    "RerankerSpec",
    "default_cache_dir",
    "load_causal_lm",
    "merge_order",
]
