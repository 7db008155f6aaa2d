"""Training the listwise re-ranker on the catalog's own interactions (LlamaRec-style).

An example is a cut point of a user's sequence: the history before it, the
first stage's top K candidates at that point (hard negatives) and the item the
user chose next. When the first stage missed the target it replaces a random
candidate, so every training list holds the answer. The candidates are shuffled
for each example (the model must read them, not learn their order) and the
loss is the cross-entropy of the target's label among the K label logits at
the last position, the label token only. Weights are LoRA adapters (peft) on
the attention projections; the base model stays frozen. Gradients are
accumulated over ``batch_size`` examples, the learning rate warms up linearly
and then decays linearly to 0, and the gradient norm is clipped: with one
example per update and a constant 3e-4, a 600-example run on MovieLens-100k
peaked at 200 examples and then fell below chance on validation.

Validation examples are scored in first-stage order, exactly as served, and
training stops early on their NDCG@10. A list that does not hold its target
scores 0 under any order, so it is not scored at all (``skip_missing``): the
NDCG over all lists is unchanged and only the informative lists cost time. The
blend weight with the first stage is then chosen on the same validation lists
(:func:`choose_blend`): the best weight of the grid, kept only when its gain
over the first stage's order is more than two standard errors, else 0.
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
    learning_rate: float = 1e-4
    """Peak learning rate, reached after the warm-up."""
    batch_size: int = 4
    """Examples whose gradients are accumulated into one optimiser update."""
    warmup: float = 0.1
    """Share of the updates over which the learning rate rises from 0 to its peak."""
    max_grad_norm: float = 1.0
    max_examples: int = 600
    """Training steps (one example each); cut points are subsampled to this many. Sized for
    the 60-minute CPU budget: a step took 3.7-5 s on 2 idle CPU cores (SmolLM2, ~475-token
    prompts), a validation list ~1 s, plus the shadow SASRec."""
    eval_every: int = 200
    """Steps between validations (rounded to whole updates)."""
    patience: int = 3
    """Evaluations without improvement before stopping."""
    valid_examples: int = 500
    """Validation users; only the ~30 % whose target the first stage found are scored."""
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
                examples: Sequence[RerankExample], *, skip_missing: bool = False
                ) -> list[list[float]]:
    """Label log-probs of each example's candidates in first-stage order (as served).

    ``skip_missing``: a list without its target gets ``[]`` instead of a forward pass
    (it scores NDCG 0 under any order, so :func:`blended_ndcg` is unchanged).
    """
    out: list[list[float]] = []
    with torch.inference_mode():
        for example in examples:
            if skip_missing and example.target not in example.candidates:
                out.append([])
                continue
            prompt = reranker.prompts.build([records[c] for c in example.candidates],
                                            history=[records[h] for h in example.history])
            out.append(reranker.label_logprobs(prompt).tolist())
    return out


def list_ndcgs(examples: Sequence[RerankExample], scores: Sequence[Sequence[float]],
               blend: Blend) -> np.ndarray:
    """NDCG@10 of each first-stage list re-ordered by ``blend`` (0 where the target is out)."""
    values = []
    for example, row in zip(examples, scores, strict=True):
        if example.target not in example.candidates:
            values.append(0.0)
            continue
        if len(row) != len(example.candidates):
            raise ValueError("a list holding its target needs one score per candidate")
        values.append(ndcg_at_10(merge_order(list(row), blend),
                                 example.candidates.index(example.target)))
    return np.asarray(values, float)


def blended_ndcg(examples: Sequence[RerankExample], scores: Sequence[Sequence[float]],
                 blend: Blend) -> float:
    """Mean NDCG@10 over the examples of the first-stage lists re-ordered by ``blend``."""
    values = list_ndcgs(examples, scores, blend)
    return float(values.mean()) if len(values) else 0.0


def choose_blend(examples: Sequence[RerankExample], scores: Sequence[Sequence[float]],
                 grid: Sequence[float] = BLEND_GRID) -> tuple[Blend, dict[float, float]]:
    """The blend weight with the best validation NDCG@10, if it clearly beats the first stage.

    The grid's best weight (ties: the smaller) is kept only when its per-list gain
    over weight 0 (the first stage's order) is more than two standard errors;
    otherwise 0, so the re-ranker never falls below the first stage on validation
    and a lucky weight on a few lists is not trusted. Returns every trial's mean.
    """
    first = list_ndcgs(examples, scores, Blend(0.0))
    per_list = {w: list_ndcgs(examples, scores, Blend(w)) for w in grid}
    trials = {w: float(v.mean()) if len(v) else 0.0 for w, v in per_list.items()}
    best = max(trials, key=lambda w: (trials[w], -w))
    return Blend(best if clear_gain(per_list[best], first) else 0.0), trials


def clear_gain(values: np.ndarray, baseline: np.ndarray) -> bool:
    """Whether the paired per-list gain of ``values`` over ``baseline`` exceeds two SE."""
    gain = np.asarray(values, float) - np.asarray(baseline, float)
    if len(gain) < 2 or gain.mean() <= 0:
        return False
    return bool(gain.mean() > 2 * gain.std(ddof=1) / math.sqrt(len(gain)))


def train_listwise(reranker: ListwiseReranker, records: Mapping[str, ItemRecord],
                   train: Sequence[RerankExample], valid: Sequence[RerankExample],
                   settings: TrainSettings,
                   progress: Callable[[int, float], None] | None = None) -> TrainLog:
    """Fit ``reranker.model`` (a peft LoRA model) in place; keep the best adapter weights.

    A step is one example; every ``batch_size`` steps the accumulated gradients
    make one update. ``progress(step, loss)`` is called after every step.
    """
    if not train:
        raise InvalidInput("no training examples: the log needs users with 3+ events")
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    model = _module(reranker)
    steps, batch = planned_steps(settings, len(train)), max(1, settings.batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    update = _updater(trainable, settings, updates=-(-steps // batch))
    every = max(batch, settings.eval_every // batch * batch)
    order = [train[i % len(train)] for i in rng.sample(range(len(train)), len(train))]
    log, best_state, stale, start = TrainLog(), _adapter_state(model), 0, time.monotonic()
    for step in range(1, steps + 1):
        example = order[(step - 1) % len(order)]
        log.losses.append(_accumulate(reranker, records, example, rng, batch))
        if step % batch == 0 or step == steps:
            update()
        if progress is not None:
            progress(step, log.losses[-1])
        if step % every == 0 or step == steps:
            ndcg = _validate(reranker, records, valid)
            log.curve.append((step, ndcg))
            if ndcg > log.best_ndcg or not log.best_step:
                log.best_ndcg, log.best_step, best_state, stale = ndcg, step, \
                    _adapter_state(model), 0
            else:
                stale += 1
            if stale >= settings.patience:
                break
    log.steps, log.seconds = step, time.monotonic() - start
    model.load_state_dict(best_state, strict=False)
    model.eval()
    return log


def _updater(parameters: list[torch.nn.Parameter], settings: TrainSettings,
             updates: int) -> Callable[[], None]:
    """One optimiser update: clip, AdamW step, advance the warm-up / linear-decay schedule."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate)
    schedule = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=math.ceil(settings.warmup * updates),
        num_training_steps=updates)

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    return update


def _validate(reranker: ListwiseReranker, records: Mapping[str, ItemRecord],
              valid: Sequence[RerankExample]) -> float:
    """Validation NDCG@10 of the LLM's order alone (dropout off while scoring)."""
    model = _module(reranker)
    model.eval()
    try:
        return blended_ndcg(valid, score_lists(reranker, records, valid, skip_missing=True),
                            Blend(1.0))
    finally:
        model.train()


def _accumulate(reranker: ListwiseReranker, records: Mapping[str, ItemRecord],
                example: RerankExample, rng: random.Random, batch: int) -> float:
    """Back-propagate one example's loss (scaled by 1 / ``batch``); returns the loss."""
    _module(reranker).train()
    candidates, target = training_list(example, rng)
    prompt = reranker.prompts.build([records[c] for c in candidates],
                                    history=[records[h] for h in example.history])
    logprobs = reranker.label_logprobs(prompt)
    loss = -torch.log_softmax(logprobs, dim=-1)[target]
    (loss / batch).backward()
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


def position_prior(scores: Sequence[Sequence[float]]) -> list[float]:
    """Mean label log-prob of each slot over scored lists: the LLM's pull towards positions.

    Subtracted from a list's scores (:func:`calibrate`), it removes the part of the
    score that depends on where a candidate sits rather than on what it is, at no
    extra forward pass ("contextual calibration"; the second order of
    :func:`two_order_scores` is the costlier cure).
    """
    width = max((len(row) for row in scores), default=0)
    return [float(np.mean([row[i] for row in scores if len(row) > i])) for i in range(width)]


def calibrate(scores: Sequence[Sequence[float]], prior: Sequence[float]
              ) -> list[list[float]]:
    """Each list's scores less the slot prior (lists longer than the prior keep the rest)."""
    return [[v - (prior[i] if i < len(prior) else 0.0) for i, v in enumerate(row)]
            for row in scores]


def two_order_scores(reranker: ListwiseReranker, records: Mapping[str, ItemRecord],
                     examples: Sequence[RerankExample]
                     ) -> tuple[list[list[float]], list[list[float]]]:
    """Each list scored as given and reversed; the reversed scores put back in list order."""
    forward = score_lists(reranker, records, examples)
    reverse = score_lists(reranker, records, [
        RerankExample(e.history, tuple(reversed(e.candidates)), e.target) for e in examples])
    return forward, [row[::-1] for row in reverse]


def position_bias(reranker: ListwiseReranker, records: Mapping[str, ItemRecord],
                  examples: Sequence[RerankExample]) -> dict[str, float]:
    """How much the list's order sways the LLM: :func:`bias_figures` of :func:`two_order_scores`."""
    return bias_figures(*two_order_scores(reranker, records, examples))


def bias_figures(forward: Sequence[Sequence[float]],
                 reverse: Sequence[Sequence[float]]) -> dict[str, float]:
    """Position-bias figures of the same lists scored in two orders (both in list order).

    ``top1_agreement``: share of lists whose best candidate is the same both ways;
    ``rank_correlation``: mean Spearman correlation of the two score vectors
    (1 = order does not matter). ``first_slot_share``: how often the LLM's best
    candidate sits in the first slot as given (1/K for an unbiased model).
    """
    agree, correlations, first = [], [], []
    for a, b in zip(forward, reverse, strict=True):
        a_arr, b_arr = np.array(a), np.array(b)
        agree.append(float(a_arr.argmax() == b_arr.argmax()))
        first.append(float(a_arr.argmax() == 0))
        ranks_a, ranks_b = a_arr.argsort().argsort(), b_arr.argsort().argsort()
        correlations.append(float(np.corrcoef(ranks_a, ranks_b)[0, 1]) if len(a) > 1 else 1.0)
    return {"top1_agreement": float(np.mean(agree)) if agree else 0.0,
            "rank_correlation": float(np.nanmean(correlations)) if correlations else 0.0,
            "first_slot_share": float(np.mean(first)) if first else 0.0}
