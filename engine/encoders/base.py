"""The two encoder interfaces the rest of the engine is written against.

Fusion, the service and the indexers depend only on these Protocols, never on
open_clip or transformers, so an encoder can be swapped (a different backend,
a fake in a test) without touching them. Every method returns a float32 numpy
array of shape ``(n, dim)`` on the CPU whose rows have unit L2 norm, so a dot
product is a cosine; an empty input gives shape ``(0, dim)``.

The module also holds the few runtime helpers both implementations share
(precision, batching, normalisation), so each behaves the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image


@runtime_checkable
class ClipEncoder(Protocol):
    """Embeds images and texts into one shared space (the CLIP channel)."""

    name: str
    """Human-readable identity, e.g. ``"open_clip ViT-B-32 laion2b_s34b_b79k"``."""
    dim: int
    """Width of every returned row."""

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images (any PIL mode; converted to RGB) as ``(n, dim)`` unit rows."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts into the image space as ``(n, dim)`` unit rows."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """Embeds texts for text-to-text similarity (the LLM/transformer text channel).

    Asymmetric models embed queries and documents differently (an instruction
    or a ``"query: "`` prefix), hence two methods.
    """

    name: str
    """Human-readable identity, e.g. ``"transformers all-MiniLM-L6-v2 (mean pooling)"``."""
    dim: int
    """Width of every returned row."""

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed catalog texts (item titles, descriptions) as ``(n, dim)`` unit rows."""
        ...

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries, with the model's query prefix, as ``(n, dim)`` unit rows."""
        ...


# Small runtime helpers shared by both implementations.


def empty_embeddings(dim: int) -> np.ndarray:
    """The ``(0, dim)`` float32 answer to an empty input."""
    return np.zeros((0, dim), dtype=np.float32)


def unit_rows(features: torch.Tensor) -> np.ndarray:
    """L2-normalise rows in float32 (even after fp16/bf16 compute) and bring them to the CPU."""
    normalised = torch.nn.functional.normalize(features.float(), p=2.0, dim=-1)
    return normalised.cpu().numpy().astype(np.float32, copy=False)


def autocast_for(device: str) -> AbstractContextManager[object]:
    """Mixed precision on CUDA (bf16 where supported, else fp16); plain fp32 elsewhere.

    CPU autocast is left off: on small CPUs it is slower than fp32 and changes
    the numbers that tests pin.
    """
    if torch.device(device).type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def batches(count: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(count)``."""
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def require_sequence(values: Sequence[object], what: str) -> None:
    """Reject a bare ``str`` where a sequence of texts is expected (it would be split in chars)."""
    if isinstance(values, str | bytes):
        kind = type(values).__name__
        raise TypeError(f"{what} must be a sequence of strings, not a single {kind}")
