"""mmrec: a multimodal recommendation engine.

Items are embedded by CLIP (image + text in one space) and a transformer text
encoder, fused into one vector plus named per-channel vectors, stored in Qdrant
and served over gRPC. ``docs/ARCHITECTURE.md`` maps the packages to the data flows.
"""

__version__ = "0.1.0"
