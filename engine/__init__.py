"""mmrec: a multimodal recommendation engine.

Items are embedded by CLIP (image + text in one space) and a transformer text
encoder, fused into one vector plus named per-channel vectors, stored in Qdrant
and served over gRPC. See ``../shared/DESIGN.md`` for the data flow.
"""

__version__ = "0.1.0"
