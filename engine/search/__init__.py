"""Search: encode the query, retrieve hybrid candidates, re-rank, explain.

    request (domain.SearchRequest)
      -> encoders.Vectoriser.query    named + fused + lexical query vectors
      -> search.HybridRetriever       one fused Qdrant query (store.hybrid_search)
      -> rerank.RerankStage           LLM re-score of the head, within budget
      -> rerank.Explainer             per-channel standing, matched words, reasons
"""

from engine.search.pipeline import SearchPipeline
from engine.search.retriever import HybridRetriever

__all__ = ["HybridRetriever", "SearchPipeline"]
