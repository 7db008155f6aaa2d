"""The runtime: one model loader for every role, and the Engine facade over every data flow.

    EngineConfig -> runtime.models (text, CLIP, BM25, LLM, SASRec, co-occurrence; each with status)
                 -> runtime.Engine (search pipeline, recommender, profiles, stores)
"""

from engine.runtime.engine import Engine
from engine.runtime.models import Models

__all__ = ["Engine", "Models"]
