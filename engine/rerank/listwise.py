"""The listwise re-ranker: K candidates scored in one forward pass (LlamaRec's verbaliser).

The prompt (:mod:`engine.rerank.prompt`) lists the candidates behind one-token
labels; a candidate's score is the log-probability of its label at the last
position, so one forward pass scores all K, and only the last position's logits
are computed (``logits_to_keep=1``: Gemma 3's 262k-token head costs nothing
elsewhere).

Serving cost is the candidate lines plus the question: the prompt's prefix
(instruction and history) is run once and its key/value cache kept in an LRU
keyed by the prefix's token ids, so a user's next request reuses it until a
new event changes their history (the key changes with it). A call that cannot
finish before its deadline at the measured pace drops candidates from the end
of the list until it fits, and does nothing when fewer than two would be left,
so the scored candidates are always a prefix of the input and never late.
"""

from __future__ import annotations

import copy
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from engine.domain import ItemRecord
from engine.rerank.loading import CausalLM
from engine.rerank.prompt import ListwisePrompt, PromptBuilder, PromptSettings
from engine.rerank.stage import Blend, RerankQuery, RerankScores

MIN_CANDIDATES = 2
"""Fewer candidates than this are not worth a forward pass."""


@dataclass(frozen=True)
class _Prefix:
    """A prompt prefix run once: its key/value cache (batch 1) and length."""

    cache: Any
    length: int


class ListwiseReranker:
    """Scores a list of candidates for a history or a query with one forward pass.

    Thread-safe: the prefix LRU is locked; the model is only read.
    """

    def __init__(self, model: CausalLM, tokenizer: PreTrainedTokenizerBase, *,
                 name: str = "listwise", prompt: PromptSettings | None = None,
                 blend: Blend | None = None, prefix_cache_size: int = 32) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer, prompt)
        self._name = name
        self._blend = blend or Blend()
        self.device = next(model.parameters()).device
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        params = inspect.signature(base.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = "logits_to_keep" if "logits_to_keep" in params else None
        self._lock = threading.Lock()
        self._prefixes: OrderedDict[tuple[int, ...], _Prefix] = OrderedDict()
        self._prefix_cache_size = prefix_cache_size
        self._seconds_per_position: float | None = None

    @property
    def name(self) -> str:
        """The model's name (with what it was trained on, for a trained one)."""
        return self._name

    @property
    def blend(self) -> Blend:
        """How this re-ranker's order mixes with the fused one (chosen on validation)."""
        return self._blend

    def score(self, query: RerankQuery, candidates: Sequence[ItemRecord], *,
              deadline: float | None = None) -> RerankScores:
        """Label log-probability per candidate; the tail that does not fit in time is None."""
        start = time.monotonic()
        scores: list[float | None] = [None] * len(candidates)
        with self._lock:  # the Rust tokenizer rejects some concurrent use
            prefix_ids = self.prompts.prefix(history=query.history, query=query.text)
            header, lines = self.prompts.candidates_header(), self.prompts.candidate_lines(
                candidates)
            tail = self.prompts.tail()
        cached = self._cached_prefix(prefix_ids)

        def work(n: int) -> int:  # positions a pass over the first n candidates computes
            return ((0 if cached else len(prefix_ids)) + len(header)
                    + sum(map(len, lines[:n])) + len(tail))

        fits = self._affordable(deadline, len(candidates), work)
        if fits < MIN_CANDIDATES:
            return RerankScores(scores, 0, time.monotonic() - start)
        body = [*header, *(t for line in lines[:fits] for t in line)]
        prompt = ListwisePrompt(prefix_ids, body, tail, self.prompts.label_ids[:fits])
        began = time.monotonic()
        with torch.inference_mode():
            values = self.label_logprobs(prompt, prefix=cached or self._run_prefix(prefix_ids))
        self._learn_pace((time.monotonic() - began) / work(fits))
        scores[:fits] = values.tolist()
        return RerankScores(scores, fits, time.monotonic() - start)

    def label_logprobs(self, prompt: ListwisePrompt, *, prefix: _Prefix | None = None
                       ) -> torch.Tensor:
        """log P(label) of each candidate at the prompt's last position (full vocabulary).

        With ``prefix`` (the prompt's own prefix, already run) only the rest is
        computed. Differentiable when called outside ``inference_mode``.
        """
        rest = [*prompt.candidates, *prompt.tail]
        if prefix is None:
            logits = self._forward(prompt.ids, None, 0)
        else:
            logits = self._forward(rest, copy.deepcopy(prefix.cache), prefix.length)
        logprobs = logits.float().log_softmax(-1)
        return logprobs[torch.tensor(prompt.label_ids, device=logprobs.device)]

    def raw_forward_seconds(self, query: RerankQuery, candidates: Sequence[ItemRecord]
                            ) -> float:
        """Seconds of the bare forward pass a warm :meth:`score` of these candidates makes.

        The prefix is run (or taken from the LRU) and its cache copied before the
        clock starts, so this is the model's own cost for the candidate lines and
        the question: the floor that ``score``'s tokenising, cache lookup and
        bookkeeping are measured against.
        """
        with self._lock:  # the tokenizer, as in score
            prompt = self.prompts.build(candidates, history=query.history, query=query.text)
        with torch.inference_mode():
            prefix = self._cached_prefix(prompt.prefix) or self._run_prefix(prompt.prefix)
            cache = copy.deepcopy(prefix.cache)
            started = time.monotonic()
            self._forward([*prompt.candidates, *prompt.tail], cache, prefix.length)
            return time.monotonic() - started

    def clear_prefixes(self) -> None:
        """Forget every cached prefix (the next call of each history runs cold)."""
        with self._lock:
            self._prefixes.clear()

    def _forward(self, ids: list[int], cache: Any, past: int) -> torch.Tensor:
        """Logits at the last position of ``ids`` run after ``past`` cached positions."""
        input_ids = torch.tensor([ids], device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones((1, past + len(ids)), dtype=torch.long,
                                         device=self.device),
            "position_ids": torch.arange(past, past + len(ids), device=self.device)[None],
        }
        if cache is not None:
            kwargs[self._cache_arg] = cache
            kwargs["use_cache"] = True
        if self._keep_arg:
            kwargs[self._keep_arg] = 1
        return self.model(**kwargs).logits[0, -1]

    def _run_prefix(self, ids: list[int]) -> _Prefix:
        """Run a prefix once and keep its cache (LRU, keyed by its token ids)."""
        input_ids = torch.tensor([ids], device=self.device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": True,
                                  "attention_mask": torch.ones_like(input_ids)}
        if self._keep_arg:
            kwargs[self._keep_arg] = 1
        out = self.model(**kwargs)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        prefix = _Prefix(cache, len(ids))
        if self._prefix_cache_size > 0:
            with self._lock:
                self._prefixes[tuple(ids)] = prefix
                while len(self._prefixes) > self._prefix_cache_size:
                    self._prefixes.popitem(last=False)
        return prefix

    def _cached_prefix(self, ids: list[int]) -> _Prefix | None:
        """The prefix's cache from an earlier call, if still in the LRU."""
        with self._lock:
            found = self._prefixes.get(tuple(ids))
            if found is not None:
                self._prefixes.move_to_end(tuple(ids))
            return found

    def _affordable(self, deadline: float | None, wanted: int,
                    positions: Callable[[int], int]) -> int:
        """Most candidates (<= ``wanted``) whose forward ends before ``deadline`` at the pace."""
        if deadline is None:
            return wanted
        now = time.monotonic()
        if now >= deadline:
            return 0
        if self._seconds_per_position is None:
            return wanted  # no estimate yet: the first call runs whole
        for n in range(wanted, MIN_CANDIDATES - 1, -1):
            if now + self._seconds_per_position * positions(n) < deadline:
                return n
        return 0

    def _learn_pace(self, seconds_per_position: float) -> None:
        """Blend this call's cost per position into the estimate for the next call."""
        old = self._seconds_per_position
        self._seconds_per_position = (seconds_per_position if old is None
                                      else (old + seconds_per_position) / 2)
