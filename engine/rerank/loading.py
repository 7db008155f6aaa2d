"""Loading the re-ranking LLM: a packaged model's name, a GGUF file, a folder, or an HF id.

A packaged model's name (``smollm2``, ``gemma3-270m``: :mod:`engine.rerank.registry`)
stands for its GGUF file in the data dir or the per-user model cache. A GGUF file
is converted once to safetensors (:mod:`engine.rerank.conversion`) into
``<data_dir>/models/<file name>`` and loaded from there afterwards.

Loading never downloads (``local_files_only=True``): a Hugging Face id must
already be in the local cache. Anything that cannot be loaded raises
:class:`~engine.domain.ModelUnavailable` with a message that says how to fix it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from engine.config import RerankSettings
from engine.domain import ModelUnavailable
from engine.rerank.causal_lm import CausalLM, decode_one
from engine.rerank.conversion import (
    MARKER,
    cache_is_current,
    ensure_converted,
    read_gguf,
    source_marker,
)
from engine.rerank.registry import FIX, candidate_paths, packaged, resolve_model

logger = logging.getLogger(__name__)

DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class RerankerSpec:
    """Everything needed to load and run the re-ranking LLM (mirrors the config's settings)."""

    model: str
    """A ``.gguf`` file, a local Hugging Face folder, or an HF causal LM id in the local cache
    (a packaged model's name is resolved to its file by :meth:`from_settings`)."""
    cache_dir: Path | None = None
    """Where a GGUF's safetensors copy goes (``<data_dir>/models/<name>``); None: no cache."""
    device: str = "cpu"
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``."""
    dtype: DType = "auto"
    """Compute dtype; ``"auto"`` is float32 on the CPU and bf16/fp16 on CUDA."""
    batch_size: int = 16
    """Candidates per forward pass."""
    top_k: int = 20
    """How many fused candidates the pipeline hands to the re-ranker."""
    max_candidate_tokens: int = 64
    """Candidate texts are cut to this many tokens before scoring."""
    max_query_tokens: int = 128
    """Queries are cut to this many tokens before they go into the prompt."""
    neutral_cache_size: int = 10_000
    """Items whose query-independent (neutral) term is kept between calls; 0 keeps none."""

    @classmethod
    def from_settings(cls, settings: RerankSettings, *, data_dir: Path, device: str
                      ) -> RerankerSpec:
        """Build a spec from the config's re-rank settings; the cache goes under ``data_dir``.

        A packaged model's name becomes its file (in ``data_dir`` or the per-user
        model cache, never the working directory); ``ModelUnavailable`` when absent.
        """
        model = resolve_packaged(settings.model, data_dir=data_dir,
                                 models_dir=settings.models_path())
        return cls(
            model=model,
            cache_dir=default_cache_dir(data_dir, model),
            device=device,
            dtype=settings.dtype,
            batch_size=settings.batch_size,
            top_k=settings.top_k,
            max_candidate_tokens=settings.max_candidate_tokens,
            max_query_tokens=settings.max_query_tokens,
            neutral_cache_size=settings.neutral_cache_size,
        )


def default_cache_dir(data_dir: Path, model: str) -> Path:
    """``<data_dir>/models/<name>``: where the safetensors copy of a GGUF file is kept."""
    name = Path(model).name
    if name.endswith(".gguf"):
        name = name[: -len(".gguf")]
    return Path(data_dir) / "models" / (name or "llm")


def resolve_packaged(model: str, *, data_dir: Path, models_dir: Path) -> str:
    """:func:`~engine.rerank.registry.resolve_model`, or, when a packaged model's file is
    gone from every place but was converted into ``data_dir`` earlier, the file that copy
    was made from (the loader then serves the copy and says the source is gone)."""
    try:
        return resolve_model(model, data_dir=data_dir, models_dir=models_dir)
    except ModelUnavailable as missing:
        first = candidate_paths(packaged(model), data_dir=data_dir, models_dir=models_dir)[0]
        try:
            source = json.loads((default_cache_dir(data_dir, str(first)) / MARKER).read_text())
            return str(source["source"])
        except (OSError, ValueError, KeyError, TypeError):
            raise missing from None  # no copy either: the message names the places looked


def load_causal_lm(
    spec: RerankerSpec,
) -> tuple[CausalLM, PreTrainedTokenizerBase, str]:
    """Load ``(model, tokenizer, name)`` in eval mode on the spec's device.

    A ``.gguf`` file is converted once into ``spec.cache_dir`` and loaded from
    there afterwards; a folder or a cached HF id loads directly.
    """
    start = time.monotonic()
    device = _resolve_device(spec.device)
    dtype = _compute_dtype(spec.dtype, device)
    source = spec.model
    if source.endswith(".gguf"):
        gguf = Path(source).expanduser()
        name = gguf.name
        if spec.cache_dir is None:
            model, tokenizer = read_gguf(gguf, dtype)
            how = "from the GGUF file (no cache_dir: converted in memory, not kept)"
        elif not gguf.exists() and (Path(spec.cache_dir) / MARKER).is_file():
            logger.warning("LLM file %s is gone; using the copy converted from it earlier in %s",
                           gguf, spec.cache_dir)
            model, tokenizer = _load_folder(str(spec.cache_dir), dtype, name)
            how = f"from the cache {spec.cache_dir} (source file gone)"
        else:
            cache_dir = Path(spec.cache_dir)
            converted = ensure_converted(gguf, cache_dir)
            model, tokenizer = _load_folder(str(cache_dir), dtype, name)
            how = f"from the cache {cache_dir}" + (" (just converted)" if converted else "")
    else:
        name = Path(source).name if Path(source).is_dir() else source
        model, tokenizer = _load_folder(source, dtype, name)
        how = "from a folder" if Path(source).is_dir() else "from the local Hugging Face cache"
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder LMs often ship without one
    model.to(device).eval()
    logger.info("LLM %s loaded in %.1f s %s, on %s (%s)", name, time.monotonic() - start, how,
                device, str(dtype).removeprefix("torch."))
    return model, tokenizer, name


def _load_folder(
    source: str, dtype: torch.dtype, name: str
) -> tuple[CausalLM, PreTrainedTokenizerBase]:
    """Tokenizer and model from a local folder or a cached HF id, never downloading."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=dtype)
    except Exception as error:  # missing files, bad JSON, damaged safetensors, unknown classes
        raise ModelUnavailable(_load_failure(source, name, error)) from error
    return model, tokenizer


def _load_failure(source: str, name: str, error: Exception) -> str:
    """A message saying what could not be loaded and how to make it loadable."""
    detail = f"({type(error).__name__}: {error})"
    if Path(source).is_dir():
        return (f"LLM {name!r}: folder {source} does not hold a loadable causal LM {detail}. If it "
                f"is a converted GGUF cache, delete it to have it rebuilt; otherwise {FIX}.")
    if source.startswith(("/", ".", "~")) or source.endswith((".gguf", ".safetensors")):
        return f"LLM {name!r}: {source} does not exist {detail}; {FIX}."
    return (f"LLM {name!r} is not in the local Hugging Face cache and mmrec does not download "
            f"models (this machine may be offline) {detail}. Fetch it where there is network "
            f"(`hf download {source} --local-dir DIR`), copy DIR here, or {FIX}.")


def _resolve_device(name: str) -> str:
    """``"auto"`` is CUDA when a GPU is visible, else the CPU."""
    if name.strip().lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _compute_dtype(dtype: DType, device: str) -> torch.dtype:
    """The dtype to run in: float32 on the CPU for ``"auto"``, bf16 (or fp16) on CUDA."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


__all__ = [
    "MARKER",
    "CausalLM",
    "RerankerSpec",
    "cache_is_current",
    "decode_one",
    "default_cache_dir",
    "ensure_converted",
    "load_causal_lm",
    "source_marker",
]
