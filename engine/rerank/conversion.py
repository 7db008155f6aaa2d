"""Reading a GGUF file, and converting it once into a safetensors folder that loads fast.

A GGUF file takes transformers tens of seconds to dequantise (SmolLM2-135M
~45 s; Gemma 3 270M longer, most of it building the 262k-token tokenizer) on
every start; the same weights saved as safetensors load in about a second. So
the first start converts the file into a cache folder and every later start
loads that copy. The copy is written into a temporary folder and renamed into
place, so a kill mid-conversion never leaves a half-written cache, and a marker
records the source file's size and mtime, so a replaced GGUF is converted again.

The copy is of the architecture transformers reads the file as (Llama for
SmolLM2, Gemma 3 for Gemma), so any GGUF causal LM it supports converts.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from engine.domain import ModelUnavailable
from engine.rerank.causal_lm import CausalLM
from engine.rerank.registry import FIX

try:  # POSIX only; without it two processes may both convert (the rename still keeps one).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # why: None marks it missing (checked before use)

logger = logging.getLogger(__name__)

MARKER = "mmrec-source.json"
"""File in a converted cache that names the GGUF it came from (path, size, mtime)."""
MARKER_FORMAT = 1
"""Bumped when the conversion changes, so older caches are rebuilt."""
_FP16_MAX = 65504.0


def ensure_converted(gguf: Path, cache_dir: Path) -> bool:
    """Make ``cache_dir`` hold a safetensors copy of ``gguf``; True if it was (re)built now.

    Held under a lock file next to the cache, so two processes starting at
    once convert only once; leftovers of killed conversions are removed.
    """
    if not gguf.is_file():
        raise ModelUnavailable(f"LLM file {gguf} does not exist; {FIX}.")
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir.parent / f".{cache_dir.name}.lock"):
        if _marker_matches(cache_dir, gguf):
            return False
        _remove_leftovers(cache_dir)
        started = time.monotonic()
        staging = cache_dir.parent / f".{cache_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _convert(gguf, staging)
            _replace_dir(staging, cache_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        logger.info("converted %s to safetensors in %s in %.1f s", gguf.name, cache_dir,
                    time.monotonic() - started)
        return True


def source_marker(gguf: Path) -> dict[str, Any]:
    """What identifies a GGUF file's content cheaply: its resolved path, size and mtime."""
    stat = gguf.stat()
    return {"format": MARKER_FORMAT, "source": str(gguf.resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def cache_is_current(gguf: Path, cache_dir: Path) -> bool:
    """True when ``cache_dir`` holds a finished conversion of ``gguf`` as it is now."""
    return gguf.is_file() and _marker_matches(cache_dir, gguf)


def read_gguf(gguf: Path, dtype: torch.dtype) -> tuple[CausalLM, PreTrainedTokenizerBase]:
    """Tokenizer and dequantised model straight from a GGUF file (slow: tens of seconds)."""
    if not gguf.is_file():
        raise ModelUnavailable(f"LLM file {gguf} does not exist; {FIX}.")
    folder, name = str(gguf.parent), gguf.name
    kwargs: dict[str, Any] = {"gguf_file": name, "local_files_only": True}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)  # plain tensors, always
    except ImportError:  # older transformers dequantise GGUF weights anyway
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    except ImportError as error:  # gguf or accelerate missing
        raise ModelUnavailable(
            f"LLM file {gguf}: reading GGUF files needs the `gguf` and `accelerate` packages "
            f"({error}); install them (`pip install gguf accelerate`) or {FIX}.") from error
    except Exception as error:  # a damaged file fails in many ways (struct, EOF, index...)
        raise ModelUnavailable(
            f"LLM file {gguf} cannot be read as a GGUF causal LM ({type(error).__name__}: "
            f"{error}); replace the file or {FIX}.") from error
    packed = {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
    if packed:
        raise ModelUnavailable(f"LLM file {gguf}: transformers kept weights packed ({packed}); "
                               f"this version cannot convert it. {FIX}.")
    return model.eval(), tokenizer


def _convert(gguf: Path, target: Path) -> None:
    """Dequantise ``gguf`` and save model, tokenizer and marker into the new folder ``target``."""
    model, tokenizer = read_gguf(gguf, torch.float32)
    plain = _plain_copy(model, gguf)
    plain.generation_config = model.generation_config
    plain.to(_disk_dtype(plain)).save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / MARKER).write_text(json.dumps(source_marker(gguf), indent=2))


def _plain_copy(model: CausalLM, gguf: Path) -> Any:
    """A model of the class transformers read ``gguf`` as, holding its dequantised weights.

    ``save_pretrained`` refuses a GGUF-loaded model, so the same architecture is
    built from its config without the GGUF quantisation (on the meta device: no
    memory) and given the weights. Returns a ``PreTrainedModel`` (typed ``Any``,
    as ``from_config`` is).
    """
    config = copy.deepcopy(model.config)
    vars(config).pop("quantization_config", None)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    built: type = type(plain)  # compared apart, so `plain` stays a full model to the checker
    if built is not type(model):
        raise ModelUnavailable(
            f"LLM file {gguf}: read as {type(model).__name__} but its config builds "
            f"{built.__name__}; this transformers version cannot convert it. {FIX}.")
    plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    plain.tie_weights()
    missing = [n for n, p in plain.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ModelUnavailable(f"LLM file {gguf}: no weights for {missing[:5]} after conversion; "
                               f"the file may be damaged or of an unsupported architecture. {FIX}.")
    return plain


def _marker_matches(cache_dir: Path, gguf: Path) -> bool:
    """True when ``cache_dir`` is a finished conversion of this very file."""
    try:
        recorded = json.loads((cache_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    current = source_marker(gguf)
    same = all(recorded.get(key) == current[key] for key in current)
    if not same:
        logger.info("cached LLM in %s was made from another version of %s; converting again",
                    cache_dir, gguf.name)
    return same and (cache_dir / "config.json").is_file()


def _replace_dir(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` folder to ``target``, replacing an outdated one."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(cache_dir: Path) -> None:
    """Delete staging folders of conversions that were killed (we hold the lock: none is live)."""
    for stale in cache_dir.parent.glob(f".{cache_dir.name}.*-*"):
        if stale.is_dir():
            logger.info("removing %s, left by an interrupted conversion", stale)
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` for the duration of the block (POSIX)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _disk_dtype(model: torch.nn.Module) -> torch.dtype:
    """float16 when every weight fits its range, else bfloat16.

    Both halve the file; float16 keeps 3 more mantissa bits, which measured on
    SmolLM2 gives ~5x smaller log-prob error than bfloat16 (0.003 vs 0.017 nats
    per token, mean).
    """
    for param in model.parameters():
        if param.is_floating_point() and param.numel() and param.abs().max() >= _FP16_MAX:
            return torch.bfloat16
    return torch.float16


__all__ = [
    "MARKER",
    "MARKER_FORMAT",
    "cache_is_current",
    "ensure_converted",
    "read_gguf",
    "source_marker",
]
