"""The ``[query_batching]`` section: dynamic micro-batching of query encoding and of store
searches across concurrent requests (``engine.batching``). Re-exported by :mod:`engine.config`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class QueryBatchingSettings(BaseModel):
    """How concurrent Search and Recommend queries share one pass of the query encoders
    (text, CLIP text, CLIP image). Environment: ``MMREC_QUERY_BATCHING__ENABLED=false`` and
    so on."""

    enabled: bool = Field(
        True, description="Encode queries that arrive together in one forward pass per "
        "encoder; off: each query is encoded alone, on its request's thread.")
    window_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="Longest a query waits for others to join its "
        "batch, counted from its arrival and never past its request's deadline. A query that "
        "arrives while no other is queued or being encoded starts at once and waits nothing.")
    max_batch: int = Field(
        32, ge=1, le=1024, description="Most queries in one forward pass (or searches in one "
        "store request); a full batch starts without waiting out the window.")
    store: bool = Field(
        False, description="Also send the hybrid searches that arrive together to the store "
        "as one request (qdrant-edge query_batch, the server's query_batch_points), with the "
        "same window and maximum; needs enabled. Off (the default: on the embedded store it "
        "cut the raw cost per search but not the service's, see docs/ARCHITECTURE.md): one "
        "store request per search.")
