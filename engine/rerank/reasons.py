"""One "why you'll like it" sentence per result, written by the LLM from the facts alone.

The LLM (the re-ranker's, SmolLM2-135M by default) is shown only the result's
:class:`ReasonFacts` (its title and attributes, the history items behind it,
what they share, the words it matched) and the start of the sentence, seeded
with the item and, when there is one, the first history title ("You will like
Aladdin because, like Toy Story, it"): a 135M model left to open the sentence
itself drifts to other films. It continues greedily up to the first sentence
end. The sentence then goes through :mod:`engine.rerank.faithfulness`; one
that names a title the facts lack, repeats itself, runs long or says nothing is
replaced by the plain sentence built from the facts, and the reason records
which (``Reason.source``, ``Reason.rejected``).

A deadline is honoured twice: a reason is not started when the measured speed
says it cannot finish in time, and one that runs out of time is dropped rather
than cut mid-word (the plain sentence takes its place).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, StoppingCriteria

from engine.domain.results import ReasonFacts
from engine.rerank.causal_lm import CausalLM, decode_one
from engine.rerank.faithfulness import Reason, checked, words

logger = logging.getLogger(__name__)

REASON_INSTRUCTION = ("Facts:\n{facts}\nIn one short sentence, say why {task}. "
                      "Use only these facts.")
PLAIN_REASON_PROMPT = "Facts:\n{facts}\nOne short sentence on why {task}:\n"
"""The chat-template request, and the plain-text prompt for tokenizers without a template."""
MAX_NEW_TOKENS = 32
"""Tokens the LLM may add to the seeded start; a sentence not ended by then is too long."""
MIN_NEW_TOKENS = 6
"""A reason is not started when the deadline leaves time for fewer tokens than this."""
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


@dataclass(frozen=True, slots=True)
class Draft:
    """What the LLM wrote: the seeded start plus its continuation, up to the sentence end."""

    text: str
    """"" when the LLM added no word to the seeded start."""
    complete: bool
    """False when the token limit came before the sentence ended."""


def fact_lines(facts: ReasonFacts) -> str:
    """The facts as the prompt lists them, one per line; nothing else goes into the prompt."""
    item = facts.title + (f" ({', '.join(facts.attributes)})" if facts.attributes else "")
    lines = [f"- Item: {item}"]
    if facts.liked:
        lines.append(f"- The user liked: {'; '.join(facts.liked)}")
    if facts.shared:
        lines.append(f"- In common with them: {', '.join(facts.shared)}")
    if facts.query:
        lines.append(f"- Asked for: {facts.query}")
    if facts.matched_terms:
        lines.append(f"- Words it matches: {', '.join(facts.matched_terms)}")
    return "\n".join(lines)


def task(facts: ReasonFacts) -> str:
    """What the sentence is to say: why the user will like it, or why it matches the search."""
    if facts.query and not facts.liked:
        return f"{facts.title} matches '{facts.query}'"
    return f"the user will like {facts.title}"


def sentence_start(facts: ReasonFacts) -> str:
    """The seeded opening the LLM continues (its words are all facts)."""
    if facts.liked:
        return f"You will like {facts.title} because, like {facts.liked[0]}, it"
    if facts.query:
        return f"{facts.title} matches '{facts.query}' because it"
    return f"You will like {facts.title} because it"


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
    """Writes a checked reason per result from its facts; callable as the explainer's hook."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_query_tokens: int = 32,
        max_item_tokens: int = 24,
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

    def __call__(self, facts: ReasonFacts, deadline: float | None) -> Reason:
        """:meth:`write` with a positional deadline (the explainer's ``WriteReason`` shape)."""
        return self.write(facts, deadline=deadline)

    def write(self, facts: ReasonFacts, *, deadline: float | None = None) -> Reason:
        """The LLM's sentence when it passes the faithfulness checks, else the plain one."""
        draft = self.draft(facts, deadline=deadline)
        if draft is None:
            return checked(None, facts)
        return checked(draft.text, facts, complete=draft.complete)

    def draft(self, facts: ReasonFacts, *, max_new_tokens: int = MAX_NEW_TOKENS,
              deadline: float | None = None) -> Draft | None:
        """The LLM's unchecked sentence, or None when time does not allow one.

        ``deadline`` is a ``time.monotonic()`` value. The first call has no
        speed estimate and relies on stopping at the deadline alone.
        """
        budget = self._affordable_tokens(deadline, max_new_tokens)
        if budget < min(MIN_NEW_TOKENS, max_new_tokens):
            return None
        facts = self._shortened(facts)
        start_text = sentence_start(facts)
        prompt = self._prompt_ids(facts, start_text)
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
        continuation = decode_one(self.tokenizer, new, skip_special_tokens=True)
        return _joined(start_text, continuation, complete=len(new) < budget)

    def _shortened(self, facts: ReasonFacts) -> ReasonFacts:
        """The facts with each title and the query cut to the token limits, on one line."""
        def cut(text: str, limit: int | None = None) -> str:
            return self._truncate(text, limit or self.max_item_tokens)

        return ReasonFacts(title=cut(facts.title), attributes=list(facts.attributes),
                           liked=[cut(t) for t in facts.liked], shared=list(facts.shared),
                           query=cut(facts.query, self.max_query_tokens),
                           matched_terms=list(facts.matched_terms),
                           channels=list(facts.channels))

    def _prompt_ids(self, facts: ReasonFacts, start_text: str) -> torch.Tensor:
        """The facts through the chat template (plain text without one) plus the seeded start."""
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            message = REASON_INSTRUCTION.format(facts=fact_lines(facts), task=task(facts))
            text = tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                                 tokenize=False, add_generation_prompt=True)
            prefix: list[int] = []
        else:
            text = PLAIN_REASON_PROMPT.format(facts=fact_lines(facts), task=task(facts))
            prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        with self._lock:
            ids = prefix + list(tokenizer(f"{text}{start_text}",
                                          add_special_tokens=False)["input_ids"])
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


def _joined(start_text: str, continuation: str, *, complete: bool) -> Draft:
    """The seeded start and the continuation up to its first sentence end, as one sentence.

    A continuation with no word is no sentence (""); one ended by a newline or the
    end-of-text token without punctuation gets a full stop.
    """
    match = _SENTENCE_END.search(continuation)
    ended = bool(match)
    if match:
        continuation = continuation[: match.end()]
    continuation = continuation.rstrip()
    if not words(continuation):
        return Draft("", complete=True)
    glue = "" if continuation[:1] in " '\u2019,.;:!?" else " "
    text = " ".join(f"{start_text}{glue}{continuation}".split())
    complete = ended or complete
    if complete and text[-1] not in ".!?":
        text = text.rstrip(" ,;:") + "."
    return Draft(text, complete=complete)
