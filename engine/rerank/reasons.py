"""One generated sentence saying why an item matches a search.

The sentence is greedy output of the same small causal LM that re-ranks
(SmolLM2-135M by default): fluent, often plausible, sometimes wrong. It is
shown as the model's text, never as a fact the engine checked; the scores and
matched terms in an explanation are the evidence.

Generation stops at the first sentence end or newline. A deadline is honoured
twice: a reason is not started when the measured speed says it cannot finish
in time, and one that runs out of time is dropped rather than cut mid-word.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, StoppingCriteria

from engine.rerank.loading import CausalLM, decode_one

logger = logging.getLogger(__name__)

REASON_INSTRUCTION = "In one sentence, say why '{item}' matches the search '{query}'."
PLAIN_REASON_PROMPT = "Search: {query}\nItem: {item}\nWhy the item matches the search:"
"""The chat-template request, and the plain-text prompt for tokenizers without a template."""
MIN_NEW_TOKENS = 6
"""A reason is not started when the deadline leaves time for fewer tokens than this."""
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


class _StopAtSentenceOrDeadline(StoppingCriteria):
    """Stops generation at the first sentence end or newline, or when the deadline passes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int,
                 deadline: float | None) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.deadline = deadline
        self.timed_out = False
        self.first_step: float | None = None
        self.last_step: float | None = None
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                 **kwargs: object) -> torch.Tensor:
        """One flag per row: True once that row's text has a sentence end."""
        now = time.monotonic()
        self.first_step = self.first_step or now
        self.last_step, self.steps = now, self.steps + 1
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out = True
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done = [
            bool(_SENTENCE_END.search(decode_one(
                self.tokenizer, row[self.prompt_length:], skip_special_tokens=True).lstrip()))
            for row in input_ids
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class ReasonWriter:
    """Writes a short generated reason per (query, item); callable as the explainer's hook."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_query_tokens: int = 64,
        max_item_tokens: int = 64,
    ) -> None:
        """Use an already loaded causal LM (the re-ranker's: ``LlmReranker.model``)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_query_tokens = max_query_tokens
        self.max_item_tokens = max_item_tokens
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()
        self._seconds_per_token: float | None = None
        self._prefill_seconds: float | None = None

    def __call__(self, query: str, item_text: str, deadline: float | None) -> str | None:
        """:meth:`explain` with a positional deadline (the explainer's ``ReasonWriter`` shape)."""
        return self.explain(query, item_text, deadline=deadline)

    def explain(
        self,
        query: str,
        item_text: str,
        *,
        max_new_tokens: int = 32,
        deadline: float | None = None,
    ) -> str | None:
        """One sentence on why ``item_text`` matches ``query``, or None when time does not allow.

        ``deadline`` is a ``time.monotonic()`` value. The first call has no
        speed estimate and relies on stopping at the deadline alone.
        """
        budget = self._affordable_tokens(deadline, max_new_tokens)
        if budget < min(MIN_NEW_TOKENS, max_new_tokens):
            return None
        prompt = self._prompt_ids(query, item_text)
        stop = _StopAtSentenceOrDeadline(self.tokenizer, prompt.shape[1], deadline)
        config = GenerationConfig(max_new_tokens=budget, do_sample=False,
                                  pad_token_id=self._pad_id(),
                                  eos_token_id=self.tokenizer.eos_token_id)
        start = time.monotonic()
        with torch.inference_mode():
            output = self.model.generate(input_ids=prompt,
                                         attention_mask=torch.ones_like(prompt),
                                         generation_config=config, stopping_criteria=[stop])
        new = output[0, prompt.shape[1]:]
        self._learn(start, stop)
        if stop.timed_out:
            logger.debug("reason dropped: deadline reached after %d tokens", len(new))
            return None
        return _first_sentence(decode_one(self.tokenizer, new, skip_special_tokens=True),
                               complete=len(new) < budget)

    def _prompt_ids(self, query: str, item_text: str) -> torch.Tensor:
        """The request through the chat template (plain text without one), as a batch of one."""
        query = self._truncate(query, self.max_query_tokens)
        item = self._truncate(item_text, self.max_item_tokens)
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            message = REASON_INSTRUCTION.format(item=item, query=query)
            text = tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                                 tokenize=False, add_generation_prompt=True)
            prefix: list[int] = []
        else:
            text = PLAIN_REASON_PROMPT.format(query=query, item=item)
            prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        with self._lock:
            ids = prefix + list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return torch.tensor([ids], device=self.device)

    def _truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut to ``max_tokens`` tokens, one line."""
        text = " ".join(text.split())
        with self._lock:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return text if len(ids) <= max_tokens else decode_one(self.tokenizer, ids[:max_tokens])

    def _affordable_tokens(self, deadline: float | None, wanted: int) -> int:
        """How many new tokens fit before ``deadline`` at the measured speed (<= ``wanted``)."""
        if deadline is None:
            return wanted
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return 0
        if self._seconds_per_token is None or self._prefill_seconds is None:
            return wanted  # no estimate yet: the stopping criterion enforces the deadline
        affordable = (remaining - self._prefill_seconds) / self._seconds_per_token
        return max(0, min(wanted, int(affordable)))

    def _learn(self, start: float, stop: _StopAtSentenceOrDeadline) -> None:
        """Update the speed estimate from when each generation step finished."""
        if stop.first_step is None or stop.last_step is None:
            return
        prefill = stop.first_step - start  # prompt pass plus the first token
        per_token = (stop.last_step - stop.first_step) / max(stop.steps - 1, 1)
        if stop.steps < 2:
            per_token = prefill  # an upper bound until a longer generation is seen
        with self._lock:
            if self._seconds_per_token is None or self._prefill_seconds is None:
                self._seconds_per_token, self._prefill_seconds = per_token, prefill
            else:
                self._seconds_per_token = 0.5 * self._seconds_per_token + 0.5 * per_token
                self._prefill_seconds = 0.5 * self._prefill_seconds + 0.5 * prefill

    def _pad_id(self) -> int:
        """A pad id for generate (only one row, so never used for padding)."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0


def _first_sentence(text: str, *, complete: bool) -> str | None:
    """The text up to its first sentence end or newline; '…' marks one cut by the token limit."""
    text = text.strip()
    match = _SENTENCE_END.search(text)
    if match:
        return text[: match.end()].strip() or None
    if not text:
        return None
    return text if complete else text.rstrip(" ,;:") + "…"
