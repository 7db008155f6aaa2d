"""Encoders: CLIP (open_clip) for images and texts, transformers models for text.

Everything outside this package uses the two interfaces and the factory:

    from engine.encoders import create_clip_encoder, create_text_encoder, resolve_device

Specs are data (:mod:`engine.encoders.registry`); the factory resolves
settings into a spec with fast offline checks and raises
:class:`engine.domain.ModelUnavailable` (never random weights) when a model
cannot be loaded here.
"""

from engine.encoders.base import ClipEncoder, TextEncoder
from engine.encoders.clip import OpenClipEncoder
from engine.encoders.factory import (
    clip_embedding_dim,
    create_clip_encoder,
    create_text_encoder,
    resolve_clip_spec,
    resolve_device,
    resolve_text_encoder_spec,
)
from engine.encoders.lexical import LexicalEncoder, LexicalSettings
from engine.encoders.registry import (
    TEXT_ENCODERS,
    ClipSpec,
    TextEncoderSpec,
    find_text_encoder,
    list_text_encoders,
)
from engine.encoders.text import TransformersTextEncoder, pool

__all__ = [
    "TEXT_ENCODERS",
    "ClipEncoder",
    "ClipSpec",
    "LexicalEncoder",
    "LexicalSettings",
    "OpenClipEncoder",
    "TextEncoder",
    "TextEncoderSpec",
    "TransformersTextEncoder",
    "clip_embedding_dim",
    "create_clip_encoder",
    "create_text_encoder",
    "find_text_encoder",
    "list_text_encoders",
    "pool",
    "resolve_clip_spec",
    "resolve_device",
    "resolve_text_encoder_spec",
]
