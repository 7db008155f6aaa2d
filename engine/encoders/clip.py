"""The CLIP channel's encoder: one open_clip model for images and texts.

:func:`load_clip_encoder` builds an :class:`OpenClipEncoder` from a resolved
:class:`~engine.encoders.registry.ClipSpec`; every offline check (is the
architecture known, are its weights on disk) has already happened in the
factory, so nothing here touches the network.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, Self

import numpy as np
import torch
from PIL import Image

from engine.domain import ModelUnavailable
from engine.encoders.base import (
    autocast_for,
    batches,
    empty_embeddings,
    require_sequence,
    unit_rows,
)
from engine.encoders.images import to_rgb
from engine.encoders.registry import ClipSpec

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_SEED = 0
"""Seed for ``random_weights`` models, so tests and benchmarks see the same model every run."""


class ClipModel(Protocol):
    """What the encoder calls of an open_clip model (``open_clip.CLIP`` and its kin, all
    ``torch.nn.Module``; open_clip ships no types, and a module's attributes are not typed)."""

    def eval(self) -> Self:
        """Inference mode (dropout off); returns the model."""
        ...

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image features, one row per image."""
        ...

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Text features, one row per token sequence."""
        ...


class OpenClipEncoder:
    """A :class:`~engine.encoders.base.ClipEncoder` backed by an open_clip model.

    Thread-safe: forward passes run under ``torch.inference_mode`` and the
    tokenizer is guarded by a lock (it keeps a mutable cache).
    """

    def __init__(
        self,
        model: ClipModel,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        name: str,
        dim: int,
        device: str,
        batch_size: int,
    ) -> None:
        """Wrap an already built model; use :func:`load_clip_encoder` to build one."""
        self.name = name
        self.dim = dim
        self.device = device
        self.batch_size = batch_size
        self._model = model.eval()
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()

    def __repr__(self) -> str:
        """Name, width and device, for logs."""
        return f"OpenClipEncoder({self.name!r}, dim={self.dim}, device={self.device!r})"

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images as ``(n, dim)`` float32 unit rows.

        Any PIL mode is accepted: transparency is flattened onto white first
        (:func:`engine.encoders.images.to_rgb`), as catalog stamps are often RGBA or palette PNGs.
        """
        if len(images) == 0:
            return empty_embeddings(self.dim)
        parts = []
        for part in batches(len(images), self.batch_size):
            pixels = torch.stack([self._preprocess(to_rgb(image)) for image in images[part]])
            with torch.inference_mode(), autocast_for(self.device):
                features = self._model.encode_image(pixels.to(self.device))
            parts.append(unit_rows(features))
        return np.concatenate(parts)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (truncated to the model's context) as ``(n, dim)`` float32 unit rows."""
        require_sequence(texts, "texts")
        if len(texts) == 0:
            return empty_embeddings(self.dim)
        parts = []
        for part in batches(len(texts), self.batch_size):
            with self._tokenizer_lock:
                tokens = self._tokenizer(list(texts[part]))
            with torch.inference_mode(), autocast_for(self.device):
                features = self._model.encode_text(tokens.to(self.device))
            parts.append(unit_rows(features))
        return np.concatenate(parts)


def load_clip_encoder(spec: ClipSpec, device: str, batch_size: int) -> OpenClipEncoder:
    """Build the open_clip model, its preprocessing and tokenizer for ``spec`` on ``device``.

    Random weights are built under a fixed seed (without disturbing the
    caller's RNG) so that a test can pin their output. Failures to load a
    weights file (corrupt, wrong architecture) become :class:`ModelUnavailable`.
    open_clip (with timm and torchvision, ~4 s of imports) is imported here, on the
    first CLIP load, so a service with CLIP off never pays for it.
    """
    import open_clip

    arch_cfg = open_clip.get_model_config(spec.arch) or {}
    kwargs = _create_kwargs(spec, arch_cfg)
    try:
        if spec.random_weights:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.arch, pretrained=None, device=device, **kwargs
                )
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch, pretrained=str(spec.weights), device=device, **kwargs
            )
    except ModelUnavailable:
        raise
    except Exception as error:
        source = "random weights" if spec.random_weights else f"weights file {spec.weights}"
        raise ModelUnavailable(
            f"could not build open_clip {spec.arch} with {source}: {error}. If the file is "
            f"truncated or belongs to another architecture, replace it or point "
            f"clip.pretrained (MMREC_CLIP__PRETRAINED) at the right file."
        ) from error
    tokenizer = _tokenizer(spec.arch, arch_cfg)
    logger.info("CLIP encoder %s ready on %s (dim %d)", spec.name, device, spec.embed_dim)
    return OpenClipEncoder(
        model,
        preprocess,
        tokenizer,
        name=spec.name,
        dim=spec.embed_dim,
        device=device,
        batch_size=batch_size,
    )


def _create_kwargs(spec: ClipSpec, arch_cfg: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``create_model_and_transforms`` that keep it off the network.

    The tag's preprocessing and QuickGELU flag are passed explicitly because
    the factory hands open_clip a file path, not the tag. Base tower weights
    (timm/HF) are never downloaded, and an HF text tower is built from its
    config in the local hub cache.
    """
    kwargs: dict[str, Any] = {
        "pretrained_image": False,
        "pretrained_text": False,
        "force_quick_gelu": spec.quick_gelu,
        "image_mean": spec.preprocess.get("mean"),
        "image_std": spec.preprocess.get("std"),
        "image_interpolation": spec.preprocess.get("interpolation"),
        "image_resize_mode": spec.preprocess.get("resize_mode"),
    }
    if spec.text_tower_dir is not None:
        text_cfg = dict(arch_cfg.get("text_cfg", {}))
        text_cfg["hf_model_name"] = str(spec.text_tower_dir)
        text_cfg["hf_model_pretrained"] = False
        kwargs["text_cfg"] = text_cfg
    return kwargs


def _tokenizer(arch: str, arch_cfg: dict[str, Any]) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's tokenizer for ``arch``; Hugging Face tokenizers are read from the cache only."""
    import open_clip

    text_cfg = arch_cfg.get("text_cfg", {})
    try:
        if text_cfg.get("hf_tokenizer_name"):
            return open_clip.get_tokenizer(arch, local_files_only=True)
        return open_clip.get_tokenizer(arch)
    except Exception as error:
        raise ModelUnavailable(
            f"the tokenizer of open_clip {arch} could not be loaded offline: {error}"
        ) from error

