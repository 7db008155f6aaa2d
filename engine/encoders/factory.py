"""The one place encoders are created: settings in, a ready encoder or ``ModelUnavailable`` out.

The factory resolves settings into a spec (registry entry, architecture
config, local weights file) with cheap offline checks first, and only then
builds the model. It never downloads and never falls back to random weights:
a channel without weights is reported, and the engine turns it off.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache

from engine.config import ClipSettings, TextEncoderSettings
from engine.domain import ModelUnavailable
from engine.encoders.base import ClipEncoder, TextEncoder
from engine.encoders.clip import load_clip_encoder
from engine.encoders.registry import ClipSpec, TextEncoderSpec, find_text_encoder
from engine.encoders.text import load_text_encoder

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".npz")
"""File endings that mark ``clip.pretrained`` as a path rather than a tag."""

OPEN_CLIP_URL_CACHE = Path("~/.cache/clip")
"""Where open_clip keeps weights it downloaded from plain URLs (not the hub)."""

_OPEN_CLIP_HF_WEIGHTS = "open_clip_pytorch_model.bin"
_OPEN_CLIP_HF_SAFE_WEIGHTS = "open_clip_model.safetensors"


def _open_clip() -> Any:
    """The open_clip module, imported on first use: with timm and torchvision it costs ~4 s
    of start-up, which a service with CLIP off should not pay."""
    return importlib.import_module("open_clip")


_LIST_MODELS_HINT = "python -c 'import open_clip; print(open_clip.list_models())'"
_PRETRAINED_FIX = (
    "Put the weights file on this machine and set clip.pretrained = \"/path/to/weights\" "
    "(env MMREC_CLIP__PRETRAINED=/path/to/weights; .safetensors, .bin or .pt), or turn the "
    "CLIP channel off with clip.enabled = false (MMREC_CLIP__ENABLED=false)."
)


def resolve_device(name: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when a GPU is visible, else ``"cpu"``; others pass through.

    Raises ``ValueError`` for strings torch does not accept as a device.
    """
    if name.strip().lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except RuntimeError as error:
        raise ValueError(
            f"invalid device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from error
    return name


def clip_embedding_dim(model: str) -> int:
    """Width of an open_clip architecture's joint space, read from its config, offline.

    Needs no weights and builds nothing, so the engine can lay out the fused
    vector even while the CLIP channel is off.
    """
    return int(_arch_config(model)["embed_dim"])


def create_clip_encoder(settings: ClipSettings, device: str) -> ClipEncoder:
    """The CLIP encoder the settings describe, on ``device`` (already resolved or ``"auto"``)."""
    spec = resolve_clip_spec(settings)
    return load_clip_encoder(spec, resolve_device(device), settings.batch_size)


def create_text_encoder(settings: TextEncoderSettings, device: str) -> TextEncoder:
    """The text encoder the settings describe, on ``device`` (already resolved or ``"auto"``)."""
    spec = resolve_text_encoder_spec(settings)
    return load_text_encoder(
        spec,
        _text_source(spec),
        resolve_device(device),
        max_length=settings.max_length,
        batch_size=settings.batch_size,
    )


def resolve_clip_spec(settings: ClipSettings, *, hf_cache_dir: Path | None = None) -> ClipSpec:
    """Check architecture and weights offline (fast) and say exactly what will be built.

    ``pretrained`` is an open_clip tag, whose weights must already be in the
    Hugging Face cache or open_clip's URL cache, or a path to a weights file.
    Raises :class:`ModelUnavailable` with the fix when they are not there.
    """
    arch = settings.model.strip().replace("/", "-")
    cfg = _arch_config(arch)
    text_tower_dir = _check_hf_text_assets(arch, cfg, hf_cache_dir)
    base = ClipSpec(
        arch=arch,
        embed_dim=int(cfg["embed_dim"]),
        weights=None,
        label="random weights",
        text_tower_dir=text_tower_dir,
    )
    if settings.random_weights:
        if settings.pretrained:
            logger.warning(
                "clip.random_weights is set: ignoring clip.pretrained=%r and building %s "
                "with RANDOM weights (tests and benchmarks only)", settings.pretrained, arch
            )
        return base
    pretrained = (settings.pretrained or "").strip()
    if not pretrained:
        raise ModelUnavailable(
            f"no weights configured for open_clip {arch}: clip.pretrained is empty and "
            f"clip.random_weights is off (random weights are never used silently). "
            f"Set clip.pretrained to a tag such as 'laion2b_s34b_b79k' whose weights are cached, "
            f"or to a local file. {_PRETRAINED_FIX}"
        )
    if _open_clip().is_pretrained_cfg(arch, pretrained):
        return _spec_for_tag(base, pretrained, hf_cache_dir)
    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser().resolve()
        if not path.is_file():
            raise ModelUnavailable(
                f"CLIP weights file {path} (clip.pretrained) does not exist or is not a file. "
                f"Fix the path or copy the weights there. {_PRETRAINED_FIX}"
            )
        return replace(base, weights=path, label=str(path))
    tags = _open_clip().list_pretrained_tags_by_model(arch)
    raise ModelUnavailable(
        f"clip.pretrained={pretrained!r} is neither a known open_clip tag for {arch} "
        f"(known: {', '.join(tags) or 'none'}) nor a path to a weights file. {_PRETRAINED_FIX}"
    )


def resolve_text_encoder_spec(settings: TextEncoderSettings) -> TextEncoderSpec:
    """The registry entry, local folder or HF id named by ``settings.model``, with overrides.

    Unknown names that are not folders are taken as Hugging Face ids with mean
    pooling; ``settings.pooling`` and ``settings.query_prefix`` win over the spec.
    """
    name = settings.model.strip()
    spec = find_text_encoder(name)
    if spec is None:
        folder = Path(name).expanduser()
        if folder.is_dir():
            spec = TextEncoderSpec(name=folder.resolve().name, source=str(folder.resolve()))
        elif _looks_like_folder(name):
            raise ModelUnavailable(
                f"text encoder folder {folder.resolve()} (text_encoder.model) does not exist. "
                f"Copy the model there or set text_encoder.model "
                f"(env MMREC_TEXT_ENCODER__MODEL) to an existing folder."
            )
        else:
            spec = TextEncoderSpec(name=name, source=name)
    overrides: dict[str, Any] = {}
    if settings.pooling is not None:
        overrides["pooling"] = settings.pooling
    if settings.query_prefix is not None:
        overrides["query_prefix"] = settings.query_prefix
    return replace(spec, **overrides) if overrides else spec


def _text_source(spec: TextEncoderSpec) -> str:
    """Where to load ``spec`` from: its package's bundled folder when installed, else its source."""
    if spec.package is None:
        return spec.source
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        logger.warning(
            "package %s (bundled %s) is not installed; looking for %s in the HF cache",
            spec.package, spec.name, spec.source,
        )
        return spec.source
    return str(module.get_model_path())


def _arch_config(model: str) -> dict[str, Any]:
    """A built-in open_clip architecture's config, or ModelUnavailable saying how to list them."""
    name = model.strip()
    if name.startswith(("hf-hub:", "local-dir:")):
        raise ModelUnavailable(
            f"open_clip model {name!r}: 'hf-hub:' and 'local-dir:' names are not supported "
            f"(they fetch configs from the hub). Use a built-in architecture name "
            f"(list them with {_LIST_MODELS_HINT}) and point clip.pretrained at a weights file."
        )
    cfg = _open_clip().get_model_config(name.replace("/", "-"))
    if cfg is None:
        close = difflib.get_close_matches(name, _open_clip().list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelUnavailable(
            f"unknown open_clip architecture {name!r} (clip.model).{hint} "
            f"See the valid names with {_LIST_MODELS_HINT}."
        )
    return cfg


def _check_hf_text_assets(
    arch: str, cfg: dict[str, Any], hf_cache_dir: Path | None
) -> Path | None:
    """Fail fast when an arch's Hugging Face tokenizer or text tower config is not cached.

    Left to open_clip, a missing one costs ~45 s of network retries offline.
    Returns the cached snapshot folder of the text tower's config, if the arch has one.
    """
    text_cfg = cfg.get("text_cfg", {})
    tokenizer_files = ("tokenizer_config.json", "tokenizer.json")
    needs = {
        "tokenizer": (text_cfg.get("hf_tokenizer_name"), tokenizer_files),
        "text tower": (text_cfg.get("hf_model_name"), ("config.json",)),
    }
    found: dict[str, Path] = {}
    for role, (repo, files) in needs.items():
        if not repo:
            continue
        cached = _cached_hub_file(repo, files, hf_cache_dir)
        if cached is None:
            raise ModelUnavailable(
                f"open_clip {arch} needs the Hugging Face {role} {repo!r}, which is not in the "
                f"local cache ({hf_cache_dir or hf_constants.HF_HUB_CACHE}); mmrec does not "
                f"download (this machine may be offline). Copy a hub cache holding it here, "
                f"or choose an architecture without a Hugging Face text side, e.g. ViT-B-32."
            )
        found[role] = cached.parent
    return found.get("text tower")


def _spec_for_tag(base: ClipSpec, tag: str, hf_cache_dir: Path | None) -> ClipSpec:
    """``base`` with the locally cached weights of an open_clip tag, or ModelUnavailable."""
    cfg = _open_clip().get_pretrained_cfg(base.arch, tag)
    looked: list[str] = []
    path = _local_tag_weights(cfg, hf_cache_dir, looked)
    if path is None:
        raise ModelUnavailable(
            f"CLIP weights for open_clip {base.arch} tag {tag!r} are not on this machine "
            f"(looked for {'; '.join(looked)}) and mmrec does not download them (this machine "
            f"may be offline). {_PRETRAINED_FIX}"
        )
    preprocess = {
        key: cfg[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in cfg
    }
    logger.info("open_clip %s tag %r: using cached weights %s", base.arch, tag, path)
    return replace(
        base,
        weights=path,
        label=tag,
        quick_gelu=bool(cfg.get("quick_gelu", False)),
        preprocess=preprocess,
    )


def _local_tag_weights(
    cfg: dict[str, Any], hf_cache_dir: Path | None, looked: list[str]
) -> Path | None:
    """The cached file of a pretrained cfg, mirroring open_clip's sources, without network.

    open_clip prefers ``cfg['file']``, then the hub repo (a ``.safetensors``
    twin before the pickle), then the plain URL; ``looked`` collects every
    place checked, for the error message.
    """
    if cfg.get("file"):
        looked.append(str(cfg["file"]))
        if Path(cfg["file"]).is_file():
            return Path(cfg["file"])
    if cfg.get("hf_hub"):
        repo, filename = _split_hub(cfg["hf_hub"])
        candidates = (*_safe_alternatives(filename), filename)
        looked.append(
            f"{' or '.join(candidates)} of {repo} in the Hugging Face cache "
            f"{hf_cache_dir or hf_constants.HF_HUB_CACHE}"
        )
        cached = _cached_hub_file(repo, candidates, hf_cache_dir)
        if cached is not None:
            return cached
    if cfg.get("url"):
        target = OPEN_CLIP_URL_CACHE.expanduser() / os.path.basename(cfg["url"])
        looked.append(str(target))
        if target.is_file():
            return target
    return None


def _split_hub(hf_hub: str) -> tuple[str, str]:
    """open_clip's ``'org/repo/'`` or ``'org/repo/file'`` into repo id and file name."""
    repo, filename = os.path.split(hf_hub)
    return repo, filename or _OPEN_CLIP_HF_WEIGHTS


def _safe_alternatives(filename: str) -> tuple[str, ...]:
    """The ``.safetensors`` names open_clip tries before a pickled weights file."""
    if filename == _OPEN_CLIP_HF_WEIGHTS:
        return (_OPEN_CLIP_HF_SAFE_WEIGHTS,)
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors",)
    return ()


def _cached_hub_file(
    repo: str, filenames: tuple[str, ...], hf_cache_dir: Path | None
) -> Path | None:
    """The first of ``filenames`` present in the local hub cache for ``repo`` (filesystem only)."""
    for filename in filenames:
        cached = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    return None


def _looks_like_path(value: str) -> bool:
    """True for values meant as filesystem paths (separators, ``~``, ``.``, a weights suffix)."""
    return (
        os.sep in value
        or (os.altsep is not None and os.altsep in value)
        or value.startswith(("~", "."))
        or value.lower().endswith(WEIGHT_SUFFIXES)
    )


def _looks_like_folder(value: str) -> bool:
    """True for values meant as folders rather than ``org/name`` Hugging Face ids."""
    return value.startswith(("/", "~", ".")) or value.count("/") > 1 or "\\" in value
