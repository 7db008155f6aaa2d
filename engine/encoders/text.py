"""The text channel's encoder: a transformers model, a pooling rule and L2 normalisation.

Works for sentence encoders (MiniLM, E5: mean pooling) and for decoder LLM
embedders (Qwen3-Embedding, e5-mistral: last-token pooling with an
instruction before the query). Loading never downloads: the factory passes a
local folder or a Hugging Face id that must already be in the local cache.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from engine.config import Pooling
from engine.domain import ModelUnavailable
from engine.encoders.base import batches, empty_embeddings, require_sequence, unit_rows
from engine.encoders.registry import TextEncoderSpec

logger = logging.getLogger(__name__)

_UNBOUNDED_LENGTH = 1_000_000
"""Tokenizers without a known limit report a huge ``model_max_length``; ignore those."""


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One vector per sequence from token states ``(n, length, width)``.

    The first and last real tokens are found from the attention mask, so the
    result is the same whether the batch was padded on the left or the right.
    """
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    real = attention_mask.to(torch.int64)
    if pooling == "cls":
        first = real.argmax(dim=1)  # index of the first 1
        return hidden[rows, first]
    if pooling == "last_token":
        last = hidden.shape[1] - 1 - real.flip(dims=[1]).argmax(dim=1)  # index of the last 1
        return hidden[rows, last]
    raise ValueError(f"unknown pooling {pooling!r}; use 'mean', 'cls' or 'last_token'")


class TransformersTextEncoder:
    """A :class:`~engine.encoders.base.TextEncoder` backed by a transformers model.

    Thread-safe: the tokenizer (whose Rust core rejects concurrent calls that
    change padding settings) is guarded by a lock; forward passes run under
    ``torch.inference_mode``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        spec: TextEncoderSpec,
        *,
        device: str,
        max_length: int,
        batch_size: int,
    ) -> None:
        """Wrap an already loaded model; use :func:`load_text_encoder` to build one."""
        self.spec = spec
        self.name = f"transformers {spec.name} ({spec.pooling} pooling)"
        self.dim = _hidden_size(model)
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        self._model = model.eval()
        self._tokenizer = tokenizer
        self._tokenizer.padding_side = spec.padding_side
        if spec.append_eos and tokenizer.eos_token_id is None:
            raise ModelUnavailable(
                f"text encoder {spec.name!r} must end inputs with EOS, but its tokenizer has none"
            )
        self._lock = threading.Lock()
        params = inspect.signature(model.forward).parameters
        self._takes_position_ids = "position_ids" in params
        self._takes_use_cache = "use_cache" in params

    def __repr__(self) -> str:
        """Name, width and device, for logs."""
        return f"TransformersTextEncoder({self.name!r}, dim={self.dim}, device={self.device!r})"

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed catalog texts, with the spec's document prefix, as ``(n, dim)`` unit rows."""
        require_sequence(texts, "texts")
        return self._encode([self.spec.document_prefix + text for text in texts])

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries, with the spec's query prefix or instruction, as ``(n, dim)`` unit rows."""
        require_sequence(texts, "texts")
        return self._encode([self.spec.query_prefix + text for text in texts])

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Embed in batches of similar length (less padding), returned in input order."""
        if not texts:
            return empty_embeddings(self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for part in batches(len(order), self.batch_size):
            rows = order[part]
            out[rows] = self._encode_batch([texts[i] for i in rows])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """Tokenize, run the model and pool one batch."""
        encoded = self._tokenize(texts)
        mask = encoded["attention_mask"].to(self.device)
        inputs: dict[str, Any] = {key: value.to(self.device) for key, value in encoded.items()}
        if self.spec.padding_side == "left" and self._takes_position_ids:
            # Left padding shifts real tokens right; positions counted from the first
            # real token give absolute-position models the same input as right padding.
            inputs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
        if self._takes_use_cache:
            inputs["use_cache"] = False
        with torch.inference_mode():
            hidden = self._model(**inputs).last_hidden_state
            pooled = pool(hidden.float(), mask, self.spec.pooling)
        return unit_rows(pooled)

    def _tokenize(self, texts: list[str]) -> BatchEncoding:
        """Token ids and attention mask, truncated to ``max_length`` (EOS kept when required)."""
        with self._lock:
            if not self.spec.append_eos:
                return self._tokenizer(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
            eos = self._tokenizer.eos_token_id
            encoded = self._tokenizer(
                texts, truncation=True, max_length=self.max_length - 1, padding=False
            )
            ids = [row if row and row[-1] == eos else [*row, eos] for row in encoded["input_ids"]]
            features = {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}
            return self._tokenizer.pad(features, padding=True, return_tensors="pt")


def load_text_encoder(
    spec: TextEncoderSpec,
    source: str,
    device: str,
    *,
    max_length: int,
    batch_size: int,
) -> TransformersTextEncoder:
    """Load tokenizer and model from ``source`` (local folder or cached HF id) onto ``device``.

    Never downloads (``local_files_only=True``): on an offline machine a hub
    lookup would otherwise retry for the better part of a minute before failing.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModel.from_pretrained(source, local_files_only=True, dtype=_dtype_for(device))
    except (OSError, ValueError) as error:
        raise ModelUnavailable(_load_failure(spec, source, error)) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder LMs often ship without one
    model.to(device)
    encoder = TransformersTextEncoder(
        model,
        tokenizer,
        spec,
        device=device,
        max_length=_effective_max_length(max_length, tokenizer, model),
        batch_size=batch_size,
    )
    if spec.dim is not None and spec.dim != encoder.dim:
        raise ModelUnavailable(
            f"text encoder {spec.name!r} from {source} has width {encoder.dim}, but the registry "
            f"says {spec.dim}: the folder holds a different model"
        )
    logger.info("text encoder %s ready on %s (dim %d)", encoder.name, device, encoder.dim)
    return encoder


def _load_failure(spec: TextEncoderSpec, source: str, error: Exception) -> str:
    """A message that says what could not be loaded and how to make it loadable."""
    fix = "set text_encoder.model (env MMREC_TEXT_ENCODER__MODEL) to a folder holding the model"
    if Path(source).is_dir():
        return f"text encoder {spec.name!r}: folder {source} does not hold a loadable model " \
            f"({error}); {fix} (config.json, tokenizer files and weights)."
    return (
        f"text encoder {spec.name!r}: {source!r} is not in the local Hugging Face cache and "
        f"mmrec does not download models (this machine may be offline). Fetch it where there "
        f"is network (`hf download {source} --local-dir DIR`), copy DIR here and {fix}; or use "
        f"the packaged default 'all-MiniLM-L6-v2'. ({type(error).__name__}: {error})"
    )


def _dtype_for(device: str) -> torch.dtype:
    """Half precision on CUDA (bf16 where supported), float32 on the CPU."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _hidden_size(model: torch.nn.Module) -> int:
    """Width of the model's token states, which pooling keeps."""
    config = model.config
    for attribute in ("hidden_size", "d_model", "dim"):
        value = getattr(config, attribute, None)
        if isinstance(value, int):
            return value
    raise ModelUnavailable(f"cannot tell the embedding width of {type(model).__name__}")


def _effective_max_length(
    requested: int, tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module
) -> int:
    """``requested``, lowered to what the tokenizer and position table can take."""
    limits = [requested]
    if 0 < tokenizer.model_max_length < _UNBOUNDED_LENGTH:
        limits.append(int(tokenizer.model_max_length))
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits)
