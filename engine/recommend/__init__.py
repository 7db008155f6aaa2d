"""Recommendations: live profiles from events, channels from history, one fused query.

    events (domain.Event)  -> recommend.ProfileBook      users collection in the store
    request (domain.RecommendRequest)
      -> recommend.Recommender.examples                 history + explicit items
      -> recommend.RecommendChannels                    behaviour, co-occurrence, content, context
      -> store.hybrid_search                            one fused Qdrant query (or popular items)
      -> rerank.RerankStage -> recommend.diversity      LLM re-score, then MMR
      -> explanations                                   channels and the history items behind each

    offline.OfflineFirstStage   the same first stage in numpy (no store), for tuning and training
    tuning.tune_fusion          weights, RRF k and fusion chosen on validation -> TunedFusion
"""

from engine.recommend.channels import Examples, RecommendChannels
from engine.recommend.diversity import mmr_order
from engine.recommend.offline import FusionSettings, OfflineFirstStage
from engine.recommend.profiles import ProfileBook, ProfileWeights, RecordOutcome, UserProfile
from engine.recommend.recommender import Recommender
from engine.recommend.tuning import FusionGrid, TunedFusion, tune_fusion

__all__ = [
           "Examples",
           "FusionGrid",
           "FusionSettings",
           "OfflineFirstStage",
           "ProfileBook",
           "ProfileWeights",
           "RecommendChannels",
           "Recommender",
           "RecordOutcome",
           "TunedFusion",
           "UserProfile",
           "mmr_order",
           "tune_fusion",
]
