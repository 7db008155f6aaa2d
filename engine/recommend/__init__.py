"""Recommendations: live profiles from events, channels from history, one fused query.

    events (domain.Event)  -> recommend.ProfileBook      users collection in the store
    request (domain.RecommendRequest)
      -> recommend.Recommender.examples                 history + explicit items
      -> recommend.RecommendChannels                    behaviour, co-occurrence, content, context
      -> store.hybrid_search                            one fused Qdrant query (or popular items)
      -> rerank.RerankStage -> recommend.diversity      LLM re-score, then MMR
      -> explanations                                   channels and the history items behind each
"""

from engine.recommend.channels import Examples, RecommendChannels
from engine.recommend.diversity import mmr_order
from engine.recommend.profiles import ProfileBook, ProfileWeights, RecordOutcome, UserProfile
from engine.recommend.recommender import Recommender

__all__ = [
           "Examples",
           "ProfileBook",
           "ProfileWeights",
           "RecommendChannels",
           "Recommender",
           "RecordOutcome",
           "UserProfile",
           "mmr_order",
]
