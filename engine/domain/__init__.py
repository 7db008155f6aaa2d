"""Plain domain types every layer speaks; this package imports nothing else of the engine.

Proto types stop at the service and Qdrant types at the store; between them
items, vectors and channel names, queries, requests, results, events, status
and errors are these dataclasses.
"""

from engine.domain.errors import (
    FailedPrecondition,
    InvalidInput,
    MmrecError,
    ModelUnavailable,
    NotFound,
    Overloaded,
    RemoteError,
    SchemaMismatch,
    Unavailable,
)
from engine.domain.events import Erasure, Event
from engine.domain.items import (
    DEFAULT_TENANT,
    MAX_ID_CHARS,
    MAX_TENANT_CHARS,
    ItemInput,
    ItemRecord,
    StoredItem,
    point_id,
)
from engine.domain.queries import (
    ChannelQuery,
    Condition,
    Fusion,
    HybridQuery,
    ItemFilter,
    Match,
    MatchAny,
    Range,
    RecommendStrategy,
    RecommendVectors,
)
from engine.domain.requests import STRATEGIES, RecommendRequest, SearchRequest
from engine.domain.results import (
    ChannelHit,
    Explanation,
    FusedHit,
    RankedItem,
    RecommendResult,
    SearchHit,
    SearchResult,
)
from engine.domain.status import ChannelStatus, EngineInfo, ModelStatus
from engine.domain.vectors import (
    BEHAVIOUR,
    BEHAVIOUR_CHANNELS,
    CLIP,
    CONTENT_CHANNELS,
    COOCCURRENCE,
    FUSED,
    LEXICAL,
    POPULARITY,
    TEXT,
    EncodedQuery,
    SparseVector,
)

__all__ = [
    "BEHAVIOUR",
    "BEHAVIOUR_CHANNELS",
    "CLIP",
    "CONTENT_CHANNELS",
    "COOCCURRENCE",
    "DEFAULT_TENANT",
    "FUSED",
    "LEXICAL",
    "MAX_ID_CHARS",
    "MAX_TENANT_CHARS",
    "POPULARITY",
    "STRATEGIES",
    "TEXT",
    "ChannelHit",
    "ChannelQuery",
    "ChannelStatus",
    "Condition",
    "EncodedQuery",
    "EngineInfo",
    "Erasure",
    "Event",
    "Explanation",
    "FailedPrecondition",
    "FusedHit",
    "Fusion",
    "HybridQuery",
    "InvalidInput",
    "ItemFilter",
    "ItemInput",
    "ItemRecord",
    "Match",
    "MatchAny",
    "MmrecError",
    "ModelStatus",
    "ModelUnavailable",
    "NotFound",
    "Overloaded",
    "Range",
    "RankedItem",
    "RecommendRequest",
    "RecommendResult",
    "RecommendStrategy",
    "RecommendVectors", "RemoteError",
    "SchemaMismatch",
    "SearchHit",
    "SearchRequest",
    "SearchResult",
    "SparseVector",
    "StoredItem",
    "Unavailable",
    "point_id",
]
