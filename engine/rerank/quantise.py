"""int8 weights for serving the re-ranker on the CPU, and how far they move its ranking.

PyTorch's dynamic quantisation replaces every ``nn.Linear`` by one holding int8
weights (activations are quantised per call), which runs the matrix products of
a small LLM faster on a CPU without training or calibration data. It is for
serving only: a LoRA adapter is trained on float weights and merged before this
runs. Whether it pays is measured, not assumed: ``benchmarks/rerank_throughput``
compares speed, and :func:`ranking_agreement` compares the two models' orders
of the same candidate lists.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from engine.rerank.causal_lm import CausalLM


def int8_linear(model: CausalLM) -> CausalLM:
    """``model`` with int8 ``nn.Linear`` weights (in place of a float copy; CPU only).

    Raises ValueError for a model on another device: dynamic quantisation has
    CPU kernels only, and a GPU serves bf16 faster anyway.
    """
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 weights are for the CPU; this model is on {device}")
    module: Any = model  # a torch module; CausalLM types only the inference surface
    with warnings.catch_warnings():
        # torch 2.14 marks the eager quantisation API as moving to torchao; it still works
        # and is the one that needs no extra package and no calibration.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantised: CausalLM = quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
    return quantised.eval()


def is_int8(model: CausalLM) -> bool:
    """Whether any of ``model``'s linear layers holds int8 weights."""
    module: Any = model
    return any(type(m).__name__ == "DynamicQuantizedLinear" or "quantized" in type(m).__module__
               for m in module.modules())


def ranking_agreement(reference: Sequence[Sequence[float]],
                      other: Sequence[Sequence[float]]) -> dict[str, float]:
    """How far ``other``'s scores reorder each list against ``reference``'s.

    Per list: the same top-1, Kendall's tau of the two score vectors, and the
    share of the reference's top 10 that stays in the other's top 10; the mean
    of each over the lists.
    """
    if len(reference) != len(other) or not reference:
        raise ValueError("ranking_agreement needs the same, non-empty, number of lists")
    top1, taus, overlap = [], [], []
    for ref, oth in zip(reference, other, strict=True):
        a, b = np.asarray(ref, float), np.asarray(oth, float)
        top1.append(float(a.argmax() == b.argmax()))
        tau = kendalltau(a, b).statistic
        taus.append(1.0 if np.isnan(tau) else float(tau))
        k = min(10, len(a))
        overlap.append(len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k)
    return {"top1_agreement": float(np.mean(top1)), "kendall_tau": float(np.mean(taus)),
            "top10_overlap": float(np.mean(overlap)), "lists": float(len(reference))}


__all__ = ["int8_linear", "is_int8", "ranking_agreement"]
