"""Serving a trained listwise re-ranker: base LLM + LoRA adapter, checked against what it saw.

The base model loads as the zero-shot one does (:func:`~engine.rerank.loading.load_causal_lm`,
a second copy, so the zero-shot search scorer keeps the untouched weights); the
adapter is merged into it, so serving pays nothing for LoRA. Before that, the
artefact's provenance is compared with the current base model, catalog and
first stage (:func:`~engine.rerank.artifact.check_provenance`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.domain import DEFAULT_TENANT
from engine.rerank.artifact import (
    ADAPTER,
    Provenance,
    RerankArtifact,
    check_provenance,
    model_fingerprint,
)
from engine.rerank.listwise import ListwiseReranker
from engine.rerank.loading import RerankerSpec, load_causal_lm
from engine.rerank.quantise import int8_linear, is_int8


def load_trained(folder: Path, spec: RerankerSpec, current: Provenance, *,
                 prefix_cache_size: int = 32, int8: bool = False
                 ) -> tuple[ListwiseReranker, RerankArtifact]:
    """The trained re-ranker in ``folder`` on ``spec``'s base model, or ModelUnavailable.

    ``current`` describes the store and first stage now; its ``base_fingerprint``
    is filled in here from the loaded model. ``int8``: int8 linear weights after
    the merge, when the model is on the CPU (:mod:`engine.rerank.quantise`).
    """
    artifact = RerankArtifact.load(folder)
    model, tokenizer, name = load_causal_lm(spec)
    current = replace(current, base_fingerprint=model_fingerprint(model.config))
    check_provenance(artifact.provenance, current)
    from peft import PeftModel

    base: Any = model  # a torch module; CausalLM types only the inference surface
    merged: Any = PeftModel.from_pretrained(base, Path(folder) / ADAPTER).merge_and_unload()
    if int8 and next(merged.parameters()).device.type == "cpu":
        merged = int8_linear(merged)
    gain = artifact.validation.get("gain")
    label = (f"{name} listwise, trained" + (", int8" if is_int8(merged) else "")
             + (f" (validation x{gain:.3f})" if gain else ""))
    return ListwiseReranker(merged.eval(), tokenizer, name=label, prompt=artifact.prompt,
                            blend=artifact.blend, prefix_cache_size=prefix_cache_size), artifact


def describe(artifact: RerankArtifact) -> dict[str, str]:
    """What `mmrec info` shows of a trained re-ranker: gain, blend weight, training."""
    v, t = artifact.validation, artifact.training
    details = {"blend_weight": f"{artifact.blend.weight:g} (chosen on validation"
               + ("; 0 = the first stage's order" if artifact.blend.weight == 0 else "") + ")",
               "base_model": artifact.provenance.base_model,
               "tenant": artifact.provenance.tenant or DEFAULT_TENANT}
    for key in ("first_stage", "llm", "blended"):
        if key in v:
            details[f"valid_ndcg10_{key}"] = f"{v[key]:.4f}"
    if "gain" in v:
        details["valid_gain"] = f"x{v['gain']:.3f}"
    for key in ("examples", "steps", "seconds", "candidates"):
        if key in t:
            details[f"train_{key}"] = str(t[key])
    return details
