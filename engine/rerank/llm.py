"""LLM re-ranking by contrastive log-likelihood.

A candidate's score is how much more likely the LLM finds its text after a
prompt that contains the query than after the same prompt without it:

    score = mean log P(item tokens | query prompt) - mean log P(item tokens | neutral prompt)

Subtracting the neutral term cancels what makes a text likely on its own
(short, common words), leaving what the query adds. On small models such as
SmolLM2-135M this ranks relevant items above irrelevant ones where yes/no
prompting does not (measured: 6 of 6 relevant/irrelevant pairs in order).

Cost: each prompt prefix runs once; its key/value cache serves every
candidate. A batch of candidates is *packed* into one row after the prefix,
with a block mask so each sees the prefix and its own tokens only (~1.5x the
candidates/s of right-padded rows); attention kernels that take no custom mask
(flash attention) get the padded layout instead (:mod:`engine.rerank.layouts`).
An item's neutral term does not depend on the query, so an LRU keeps it across
calls (repeat items cost about half).
Scoring runs in the caller's (fused) order and stops before a batch expected
to overrun the deadline, so the scored candidates are always a prefix.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from engine.domain import InvalidInput
from engine.rerank.layouts import (
    Batch,
    Layout,
    build_batch,
    default_layout,
    forward_positions,
    repeat,
)
from engine.rerank.loading import CausalLM, RerankerSpec, decode_one, load_causal_lm
from engine.rerank.stage import RerankScores, merge_order

logger = logging.getLogger(__name__)

QUERY_INSTRUCTION = "I am looking for: {query}. Suggest one item."
NEUTRAL_INSTRUCTION = "I am looking for something. Suggest one item."
"""Chat turns of the two prompts; the item text is scored as the assistant's answer."""
PLAIN_QUERY_PROMPT = "I am looking for: {query}. One item that fits:\n"
PLAIN_NEUTRAL_PROMPT = "I am looking for something. One item that fits:\n"
"""The same two prompts for tokenizers without a chat template."""


@dataclass(frozen=True)
class _Prefix:
    """A prompt run once: its key/value cache (batch 1) and the log-probs of the next token."""

    cache: Any
    next_logprobs: torch.Tensor
    length: int


class LlmReranker:
    """Scores candidate texts against a query with a causal LM (see the module docstring).

    Thread-safe: calls share only read-only prompt state and a locked LRU of
    neutral terms; concurrent calls share the CPU cores, so each gets slower.
    """

    def __init__(
        self,
        model: CausalLM,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str = "llm",
        batch_size: int = 16,
        max_candidate_tokens: int = 64,
        max_query_tokens: int = 128,
        neutral_cache_size: int = 10_000,
        layout: Layout | None = None,
    ) -> None:
        """Wrap a loaded causal LM; :meth:`from_spec` loads one.

        ``layout`` None picks ``"packed"`` when the model's attention takes a
        custom mask (sdpa, eager) and ``"padded"`` otherwise.
        """
        if batch_size < 1 or max_candidate_tokens < 1 or max_query_tokens < 1:
            raise ValueError("batch_size, max_candidate_tokens and max_query_tokens must be >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_candidate_tokens = max_candidate_tokens
        self.max_query_tokens = max_query_tokens
        first = next(model.parameters())
        self.device, self._dtype = first.device, first.dtype
        attention = getattr(model.config, "_attn_implementation", None)
        self.layout: Layout = layout or default_layout(attention)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._pad_id = next((int(t) for t in (tokenizer.pad_token_id, tokenizer.eos_token_id)
                             if t is not None), 0)  # masked out, never scored
        self._lock = threading.Lock()
        self._neutral_prefix: _Prefix | None = None
        self._neutral: OrderedDict[tuple[int, ...], float] = OrderedDict()
        self._neutral_cache_size = neutral_cache_size
        self._seconds_per_position: float | None = None  # forward cost, learned across calls

    @classmethod
    def from_spec(cls, spec: RerankerSpec) -> LlmReranker:
        """Load the spec's model (see :func:`~engine.rerank.loading.load_causal_lm`) and wrap it."""
        model, tokenizer, name = load_causal_lm(spec)
        return cls(model, tokenizer, name=name, batch_size=spec.batch_size,
                   max_candidate_tokens=spec.max_candidate_tokens,
                   max_query_tokens=spec.max_query_tokens,
                   neutral_cache_size=spec.neutral_cache_size)

    def __repr__(self) -> str:
        """Name, device and layout, for logs."""
        return f"LlmReranker({self.name!r}, device={str(self.device)!r}, layout={self.layout!r})"

    # -- prompts and tokens -------------------------------------------------------------------

    def prompt_ids(self, query: str) -> tuple[list[int], list[int]]:
        """Token ids of the query prompt and of the neutral prompt; items continue either."""
        query = self._truncate_text(query, self.max_query_tokens)
        return (self._chat_ids(QUERY_INSTRUCTION.format(query=query),
                               PLAIN_QUERY_PROMPT.format(query=query)),
                self._chat_ids(NEUTRAL_INSTRUCTION, PLAIN_NEUTRAL_PROMPT))

    def candidate_ids(self, candidates: Sequence[str]) -> list[list[int]]:
        """Token ids of each candidate text, cut to ``max_candidate_tokens``."""
        with self._lock:  # the Rust tokenizer rejects some concurrent use
            encoded = self.tokenizer(list(candidates), add_special_tokens=False)["input_ids"]
        return [list(ids[: self.max_candidate_tokens]) for ids in encoded]

    def _chat_ids(self, instruction: str, plain: str) -> list[int]:
        """The prompt through the model's chat template, or as plain text when it has none."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}], tokenize=False,
                add_generation_prompt=True)
            with self._lock:
                return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        with self._lock:
            ids = list(self.tokenizer(plain, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        return [bos, *ids] if bos is not None else ids

    def _truncate_text(self, text: str, max_tokens: int) -> str:
        """``text`` cut to ``max_tokens`` tokens (unchanged when shorter)."""
        with self._lock:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return text if len(ids) <= max_tokens else decode_one(self.tokenizer, ids[:max_tokens])

    # -- scoring ------------------------------------------------------------------------------

    def score(
        self, query: str, candidates: Sequence[str], *, deadline: float | None = None
    ) -> RerankScores:
        """Relevance of each candidate to ``query``; stops before a batch would pass ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value. Candidates are scored in
        input order, so the scored ones are always the first ``scored``.
        """
        start = time.monotonic()
        if isinstance(candidates, str) or not isinstance(candidates, Sequence):
            raise InvalidInput("candidates must be a sequence of texts")
        scores: list[float | None] = [None] * len(candidates)
        if not candidates or _no_time_for(deadline):
            return RerankScores(scores, 0, time.monotonic() - start)
        spent_work, spent_seconds = 0, 0.0
        query_ids = self.prompt_ids(query)[0]
        rows = self.candidate_ids(candidates)
        first = len(query_ids) + 2 * self._work(rows[: self.batch_size])
        if _no_time_for(deadline, self._seconds_per_position, first):
            return RerankScores(scores, 0, time.monotonic() - start)  # not even one batch fits
        with torch.inference_mode():
            conditioned = self._run_prefix(query_ids)
            neutral = self._neutral_prompt()
            for begin in range(0, len(rows), self.batch_size):
                batch = rows[begin: begin + self.batch_size]
                known = self._known_neutral(batch)
                pending = list({tuple(r): r for r in batch if tuple(r) not in known}.values())
                work = self._work(batch) + self._work(pending)
                pace = spent_seconds / spent_work if spent_work else self._seconds_per_position
                if _no_time_for(deadline, pace, work):
                    break
                batch_start = time.monotonic()
                scores[begin: begin + len(batch)] = self._score_batch(
                    conditioned, neutral, batch, known, pending)
                spent_seconds += time.monotonic() - batch_start
                spent_work += work
        if spent_work:
            self._learn_pace(spent_seconds / spent_work)
        scored = sum(value is not None for value in scores)
        return RerankScores(scores, scored, time.monotonic() - start)

    def rerank(
        self,
        query: str,
        candidates: Sequence[str],
        *,
        top_k: int | None = None,
        deadline: float | None = None,
    ) -> tuple[list[int], RerankScores]:
        """Indices of ``candidates`` in their new order, and the scores (input order).

        Only the first ``top_k`` (all when None) are scored. The merge rule:
        the slots that scored candidates occupied are refilled with those
        candidates best score first (ties keep input order); every unscored
        candidate stays in its own slot. Because scoring runs in input order the
        scored ones form a prefix, so this reads as "re-ranked head, then the
        fused order for the rest" -- and a budget cut degrades to the fused
        order instead of mixing scored and unscored items on incomparable scales.
        """
        head = list(candidates[: len(candidates) if top_k is None else max(top_k, 0)])
        result = self.score(query, head, deadline=deadline)
        scores = result.scores + [None] * (len(candidates) - len(head))
        order = merge_order(scores)
        return order, RerankScores(scores, result.scored, result.seconds)

    def raw_forward_rate(self, query: str, candidates: Sequence[str], *, rounds: int = 1) -> float:
        """Candidates per second of the bare batched forward passes :meth:`score` makes.

        Tokens, prompt caches and their per-batch copies are prepared untimed;
        only the model's forward calls (query and neutral prompt, ``rounds``
        times) are timed. This is the ceiling :meth:`score` is measured against
        (with the neutral LRU cold; warm, :meth:`score` skips the neutral pass).
        """
        with torch.inference_mode():
            query_ids, neutral_ids = self.prompt_ids(query)
            rows = self.candidate_ids(candidates)
            work = []
            for prefix in (self._run_prefix(query_ids), self._run_prefix(neutral_ids)):
                for begin in range(0, len(rows), self.batch_size):
                    batch = self._batch(rows[begin: begin + self.batch_size], prefix.length)
                    if batch is not None:
                        work.append((prefix, batch))
            seconds = 0.0
            for _ in range(rounds):
                for prefix, batch in work:
                    cache = repeat(prefix.cache, batch.copies)
                    started = time.monotonic()
                    self.model(**batch.inputs, **{self._cache_arg: cache}, use_cache=True)
                    seconds += time.monotonic() - started
        return len(candidates) * rounds / seconds if seconds else math.inf

    # -- internals ----------------------------------------------------------------------------

    def _score_batch(self, conditioned: _Prefix, neutral: _Prefix, batch: list[list[int]],
                     known: dict[tuple[int, ...], float], pending: list[list[int]]
                     ) -> list[float]:
        """Scores of one batch; ``known`` neutral terms are reused, ``pending`` ones computed."""
        with_query = self._mean_logprobs(conditioned, batch)
        fresh = dict(zip(map(tuple, pending), self._mean_logprobs(neutral, pending), strict=True))
        self._remember_neutral(fresh)
        base = {**known, **fresh}
        return [value - base[tuple(row)] for row, value in zip(batch, with_query, strict=True)]

    def _run_prefix(self, ids: list[int]) -> _Prefix:
        """Run a prompt once, keeping its cache and its next-token log-probs."""
        input_ids = torch.tensor([ids], device=self.device)
        out = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return _Prefix(cache, out.logits[0, -1].float().log_softmax(-1), len(ids))

    def _neutral_prompt(self) -> _Prefix:
        """The neutral prompt's prefix, computed on first use and shared by every call."""
        if self._neutral_prefix is None:
            prefix = self._run_prefix(self.prompt_ids("")[1])
            with self._lock:
                if self._neutral_prefix is None:  # another thread may have set it meanwhile
                    self._neutral_prefix = prefix
        return self._neutral_prefix

    def _mean_logprobs(self, prefix: _Prefix, rows: list[list[int]]) -> list[float]:
        """Mean log P(row tokens | prefix) for each row (0.0 for an empty row)."""
        if not rows:
            return []
        firsts = torch.tensor([row[0] if row else 0 for row in rows], device=self.device)
        nonempty = torch.tensor([bool(row) for row in rows], dtype=torch.float64)
        totals = prefix.next_logprobs[firsts].double().cpu() * nonempty
        batch = self._batch(rows, prefix.length)
        if batch is not None:
            logits = self._forward(prefix, batch)
            logits = logits.reshape(-1, logits.shape[-1])
            if batch.select is not None:
                logits = logits[batch.select]
            logits = logits.float()
            picked = logits.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
            logprobs = (picked - torch.logsumexp(logits, dim=-1)).double().cpu()
            totals.index_add_(0, batch.rows.cpu(), logprobs)
        lengths = torch.tensor([max(len(row), 1) for row in rows], dtype=torch.float64)
        return (totals / lengths).tolist()

    def _forward(self, prefix: _Prefix, batch: Batch) -> torch.Tensor:
        """Logits of a batch run after a copy of the prefix's cache."""
        cache = repeat(prefix.cache, batch.copies)
        return self.model(**batch.inputs, **{self._cache_arg: cache}, use_cache=True).logits

    def _batch(self, rows: list[list[int]], prefix_length: int) -> Batch | None:
        """Forward inputs that score ``rows`` after a prefix in this reranker's layout."""
        return build_batch(self.layout, rows, prefix_length, dtype=self._dtype,
                           pad_id=self._pad_id, device=self.device)

    def _work(self, rows: list[list[int]]) -> int:
        """Positions a forward over ``rows`` computes: the unit of the time estimate."""
        return forward_positions(self.layout, rows)

    def _known_neutral(self, rows: list[list[int]]) -> dict[tuple[int, ...], float]:
        """Neutral terms of ``rows`` that earlier calls computed (an empty row's is 0)."""
        out: dict[tuple[int, ...], float] = {}
        with self._lock:
            for key in map(tuple, rows):
                value = 0.0 if not key else self._neutral.get(key)
                if value is not None:
                    out[key] = value
                    if key:
                        self._neutral.move_to_end(key)
        return out

    def _remember_neutral(self, fresh: dict[tuple[int, ...], float]) -> None:
        """Keep newly computed neutral terms, evicting the least recently used."""
        if self._neutral_cache_size <= 0:
            return
        with self._lock:
            self._neutral.update(fresh)
            while len(self._neutral) > self._neutral_cache_size:
                self._neutral.popitem(last=False)

    def _learn_pace(self, seconds_per_position: float) -> None:
        """Blend this call's forward cost into the estimate the next call starts with."""
        old = self._seconds_per_position
        self._seconds_per_position = (seconds_per_position if old is None
                                      else (old + seconds_per_position) / 2)


def _no_time_for(deadline: float | None, seconds_per_position: float | None = None,
                 positions: int = 0) -> bool:
    """True when ``deadline`` has passed, or work of ``positions`` would end after it."""
    if deadline is None:
        return False
    expected = seconds_per_position * positions if seconds_per_position is not None else 0.0
    return time.monotonic() + expected >= deadline
