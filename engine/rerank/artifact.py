"""The trained re-ranker on disk: LoRA adapter + what it was trained on, checked at load.

``mmrec train-rerank`` writes ``<data_dir>/models/rerank/``:

    rerank.json   format, base model (spec and fingerprint), catalog and first-stage
                  fingerprints, prompt budgets, blend weight, validation and training facts
    adapter/      the peft LoRA adapter (safetensors)

A re-ranker only means something on top of the model, catalog and first stage
it was trained with, so :func:`check_provenance` refuses to load one whose base
model fingerprint or first stage differs, or whose catalog is another collection
or tenant or changed size by more than :data:`CATALOG_DRIFT`, and says which.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.domain import ModelUnavailable
from engine.rerank.prompt import PromptSettings
from engine.rerank.stage import Blend

FORMAT = 1
"""Bumped when the layout changes; older artefacts are refused with a retrain hint."""
META = "rerank.json"
ADAPTER = "adapter"
CATALOG_DRIFT = 0.10
"""Largest relative change of the catalog's size a trained re-ranker is still served on."""
RETRAIN = "run `mmrec train-rerank` again"


@dataclass(frozen=True, slots=True)
class Provenance:
    """What a re-ranker is only valid with: base model, catalog, first stage."""

    base_model: str
    """The ``rerank.model`` it was trained from (a registry name, path or HF id)."""
    base_fingerprint: str
    collection: str
    tenant: str
    catalog_items: int
    first_stage: str
    """Fingerprint of the behaviour artefact (``mmrec train-seq``) whose candidates it saw."""


@dataclass(frozen=True, slots=True)
class RerankArtifact:
    """A trained re-ranker's metadata (the adapter weights sit beside it)."""

    provenance: Provenance
    prompt: PromptSettings
    blend: Blend
    validation: Mapping[str, float]
    """NDCG@10 on validation: ``first_stage``, ``llm``, ``blended``, and ``gain`` (ratio)."""
    training: Mapping[str, Any] = field(default_factory=dict)
    """Steps, seconds, examples/s, learning curve, how candidates were built, position bias."""

    def save(self, folder: Path, model: Any) -> None:
        """Write metadata and ``model``'s adapter into ``folder`` (replaced whole, atomically)."""
        folder = Path(folder)
        staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        model.save_pretrained(staging / ADAPTER)
        meta = {"format": FORMAT, "provenance": asdict(self.provenance),
                "prompt": self.prompt.to_json(),
                "blend": {"weight": self.blend.weight, "k": self.blend.k},
                "validation": dict(self.validation), "training": dict(self.training)}
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
        old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> RerankArtifact:
        """Read the metadata; ModelUnavailable when missing, unreadable or of another format."""
        path = Path(folder) / META
        if not path.is_file():
            raise ModelUnavailable(f"no trained re-ranker at {folder}; run `mmrec train-rerank`")
        try:
            meta = json.loads(path.read_text())
            if meta.get("format") != FORMAT:
                raise ModelUnavailable(f"re-ranker at {folder} has format {meta.get('format')}, "
                                       f"this mmrec reads {FORMAT}; {RETRAIN}")
            return cls(Provenance(**meta["provenance"]), PromptSettings.from_json(meta["prompt"]),
                       Blend(float(meta["blend"]["weight"]), int(meta["blend"]["k"])),
                       meta["validation"], meta.get("training", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelUnavailable(f"re-ranker at {folder} is unreadable ({exc}); {RETRAIN}"
                                   ) from exc


def check_provenance(trained: Provenance, current: Provenance) -> None:
    """Refuse (ModelUnavailable) a re-ranker trained on another model, catalog or first stage."""
    problems = []
    if trained.base_fingerprint != current.base_fingerprint:
        problems.append(f"it was trained on the LLM {trained.base_model!r}, the configured one "
                        f"is {current.base_model!r} with other weights")
    if (trained.collection, trained.tenant) != (current.collection, current.tenant):
        problems.append(f"it was trained on collection {trained.collection!r} tenant "
                        f"{trained.tenant!r}, the store is {current.collection!r} tenant "
                        f"{current.tenant!r}")
    drift = abs(current.catalog_items - trained.catalog_items) / max(trained.catalog_items, 1)
    if drift > CATALOG_DRIFT:
        problems.append(f"the catalog had {trained.catalog_items:,} items, it now has "
                        f"{current.catalog_items:,}")
    if trained.first_stage != current.first_stage:
        problems.append("the behaviour models it took candidates from were retrained "
                        "(mmrec train-seq ran since)")
    if problems:
        raise ModelUnavailable("trained re-ranker is stale: " + "; ".join(problems)
                               + f"; {RETRAIN}")


def model_fingerprint(config: Any) -> str:
    """A short hash of a model's architecture config (names and paths left out)."""
    values = {k: v for k, v in config.to_dict().items()
              if not k.startswith("_") and k not in {"transformers_version", "name_or_path"}}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_fingerprint(folder: Path) -> str:
    """A short hash of the small metadata files (``*.json``) of an artefact folder."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.json")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
