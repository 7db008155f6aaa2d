"""Training the listwise re-ranker on the catalog's own interactions (LlamaRec-style).

An example is a cut point of a user's sequence: the history before it, the
first stage's top K candidates at that point (hard negatives) and the item the
user chose next. When the first stage missed the target it replaces a random
candidate, so every training list holds the answer. The candidates are shuffled
for each example (the model must read them, not learn their order) and the
loss is the cross-entropy of the target's label among the K label logits at
the last position, the label token only. Weights are LoRA adapters (peft) on
the attention projections; the base model stays frozen.

Validation examples are scored in first-stage order, exactly as served, and
training stops early on their NDCG@10. The blend weight with the first stage
is then chosen on the same validation lists (:func:`choose_blend`), 0 included.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from engine.domain import InvalidInput, ItemRecord
from engine.evaluation import metrics_from_ranks
from engine.rerank.listwise import ListwiseReranker
from engine.rerank.loading import CausalLM
from engine.rerank.stage import Blend, merge_order

BLEND_GRID = tuple(round(0.1 * i, 1) for i in range(11))
"""Blend weights tried on validation (0 = the first stage's order)."""


@dataclass(frozen=True, slots=True)
class RerankExample:
    """One cut point: history (oldest first), first-stage candidates (best first), the answer."""

    history: tuple[str, ...]
    candidates: tuple[str, ...]
    target: str


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """LoRA and optimisation settings of ``mmrec train-rerank``."""

    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 3e-4
    max_examples: int = 600
    """Training steps (one example each); cut points are subsampled to this many. Sized for
    the 60-minute CPU budget: a step took 3.7-5 s on 2 idle CPU cores (SmolLM2, ~475-token
    prompts), a validation list ~1 s, plus the shadow SASRec."""
    eval_every: int = 200
    patience: int = 3
    """Evaluations without improvement before stopping."""
    valid_examples: int = 150
    seed: int = 0


@dataclass(slots=True)
class TrainLog:
    """What happened in training, kept with the artefact."""

    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(steps, validation NDCG@10 of the LLM order) at each evaluation."""
    best_step: int = 0
    best_ndcg: float = 0.0

    @property
    def examples_per_second(self) -> float:
        """Training throughput."""
        return self.steps / self.seconds if self.seconds else 0.0


def planned_steps(settings: TrainSettings, examples: int) -> int:
    """Steps a run takes at most: ``max_examples``, and at most four passes over the examples."""
    return min(settings.max_examples, max(examples, 1) * 4)


def training_list(example: RerankExample, rng: random.Random) -> tuple[list[str], int]:
    """The example's candidates with the target in, shuffled; and the target's position."""
    candidates = list(example.candidates)
    if example.target not in candidates:
        if not candidates:
            raise InvalidInput("a training example needs at least one candidate")
        candidates[rng.randrange(len(candidates))] = example.target
    rng.shuffle(candidates)
    return candidates, candidates.index(example.target)


def lora_model(model: CausalLM, settings: TrainSettings) -> CausalLM:
    """The model with trainable LoRA adapters on ``settings.target_modules`` (peft).

    The loaders' ``CausalLM`` is a transformers ``PreTrainedModel``; so is the peft
    model returned, which forwards every attribute to it.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import PreTrainedModel

    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                        lora_dropout=settings.lora_dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    return cast(CausalLM, get_peft_model(cast(PreTrainedModel, model), config))


def ndcg_at_10(order: Sequence[int], target_index: int | None) -> float:
    """NDCG@10 of a candidate order for the one relevant candidate (None: not in the list)."""
    if target_index is None:
        return 0.0
    rank = order.index(target_index) + 1
    return float(metrics_from_ranks(np.array([rank]), (10,))["NDCG@10"][0])


def score_lists(reranker: ListwiseReranker, records: Mapping[str, ItemRecord],
                examples: Sequence[RerankExample]) -> list[list[float]]:
    """Label log-probs of each example's candidates in first-stage order (as served)."""
    out = []
    with torch.inference_mode():
        for example in examples:
            prompt = reranker.prompts.build([records[c] for c in example.candidates],
                                            history=[records[h] for h in example.history])
            out.append(reranker.label_logprobs(prompt).tolist())
    return out


def blended_ndcg(examples: Sequence[RerankExample], scores: Sequence[Sequence[float]],
                 blend: Blend) -> float:
    """Mean NDCG@10 over the examples of the first-stage lists re-ordered by ``blend``."""
    values = []
    for example, row in zip(examples, scores, strict=True):
        target = (example.candidates.index(example.target)
                  if example.target in example.candidates else None)
        values.append(ndcg_at_10(merge_order(list(row), blend), target))
    return float(np.mean(values)) if values else 0.0


def choose_blend(examples: Sequence[RerankExample], scores: Sequence[Sequence[float]],
                 grid: Sequence[float] = BLEND_GRID) -> tuple[Blend, dict[float, float]]:
    """The blend weight with the best validation NDCG@10 (ties: the smaller weight)."""
    trials = {w: blended_ndcg(examples, scores, Blend(w)) for w in grid}
    best = max(trials, key=lambda w: (trials[w], -w))
    return Blend(best), trials


def train_listwise(reranker: ListwiseReranker, records: Mapping[str, ItemRecord],
                   train: Sequence[RerankExample], valid: Sequence[RerankExample],
                   settings: TrainSettings,
                   progress: Callable[[int, float], None] | None = None) -> TrainLog:
    """Fit ``reranker.model`` (a peft LoRA model) in place; keep the best adapter weights.

    ``progress(step, loss)`` is called after every step.
    """
    if not train:
        raise InvalidInput("no training examples: the log needs users with 3+ events")
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    model = _module(reranker)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
    steps = planned_steps(settings, len(train))
    order = [train[i % len(train)] for i in rng.sample(range(len(train)), len(train))]
    log, best_state, stale, start = TrainLog(), _adapter_state(model), 0, time.monotonic()
    for step in range(1, steps + 1):
        example = order[(step - 1) % len(order)]
        log.losses.append(_step(reranker, records, example, rng, optimizer))
        if progress is not None:
            progress(step, log.losses[-1])
        if step % settings.eval_every == 0 or step == steps:
            model.eval()
            ndcg = blended_ndcg(valid, score_lists(reranker, records, valid), Blend(1.0))
            log.curve.append((step, ndcg))
            if ndcg > log.best_ndcg or not log.best_step:
                log.best_ndcg, log.best_step, best_state, stale = ndcg, step, \
                    _adapter_state(model), 0
            else:
                stale += 1
            model.train()
            if stale >= settings.patience:
                break
    log.steps, log.seconds = step, time.monotonic() - start
    model.load_state_dict(best_state, strict=False)
    model.eval()
    return log


def _step(reranker: ListwiseReranker, records: Mapping[str, ItemRecord],
          example: RerankExample, rng: random.Random, optimizer: torch.optim.Optimizer) -> float:
    """One optimisation step on one example; returns its loss."""
    _module(reranker).train()
    candidates, target = training_list(example, rng)
    prompt = reranker.prompts.build([records[c] for c in candidates],
                                    history=[records[h] for h in example.history])
    logprobs = reranker.label_logprobs(prompt)
    loss = -torch.log_softmax(logprobs, dim=-1)[target]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    value = float(loss.detach())
    return value if math.isfinite(value) else float("nan")


def _module(reranker: ListwiseReranker) -> torch.nn.Module:
    """The re-ranker's model as the torch module it is (``CausalLM`` types inference only)."""
    model = reranker.model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"training needs a torch module, got {type(model).__name__}")
    return model


def _adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable (adapter) weights."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def position_bias(reranker: ListwiseReranker, records: Mapping[str, ItemRecord],
                  examples: Sequence[RerankExample]) -> dict[str, float]:
    """How much the list's order sways the LLM: each list scored as given and reversed.

    ``top1_agreement``: share of lists whose best candidate is the same both ways;
    ``rank_correlation``: mean Spearman correlation of the two score vectors
    (1 = order does not matter). ``first_slot_share``: how often the LLM's best
    candidate sits in the first slot as given (1/K for an unbiased model).
    """
    agree, correlations, first = [], [], []
    forward = score_lists(reranker, records, examples)
    reverse = score_lists(reranker, records, [
        RerankExample(e.history, tuple(reversed(e.candidates)), e.target) for e in examples])
    for a, b in zip(forward, reverse, strict=True):
        a_arr, b_arr = np.array(a), np.array(b[::-1])  # b back in the forward order
        agree.append(float(a_arr.argmax() == b_arr.argmax()))
        first.append(float(a_arr.argmax() == 0))
        ranks_a, ranks_b = a_arr.argsort().argsort(), b_arr.argsort().argsort()
        correlations.append(float(np.corrcoef(ranks_a, ranks_b)[0, 1]) if len(a) > 1 else 1.0)
    return {"top1_agreement": float(np.mean(agree)) if agree else 0.0,
            "rank_correlation": float(np.nanmean(correlations)) if correlations else 0.0,
            "first_slot_share": float(np.mean(first)) if first else 0.0}
