"""The listwise prompt: instruction, the user's history (or the query), K labelled candidates.

LlamaRec's verbaliser: one prompt lists the candidates, each behind a one-token
label (``A``, ``B``, ...), and asks which one comes next; a single forward pass
then scores every candidate by the log-probability of its label at the last
position. The prompt is built from token ids in three parts so that the serving
path can cache the part that does not change:

    prefix     = chat-template head + instruction + history lines   (cached per user)
    candidates = "A. <item>" lines                                   (per request)
    tail       = the question + chat-template tail                   (fixed)

Every item is rendered compactly ("Toy Story (1995; Animation, Comedy)") and
cut to a token budget, so prompt length, and with it latency, is bounded:
``len(prefix) <= prefix budget`` and each candidate line costs at most
``max_candidate_tokens`` + 3. Training and serving build the same ids through
this one class, so what the model learned is what it is asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from engine.domain import ItemRecord

LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Candidate labels, in list order; K is at most their number."""
RECOMMEND_INSTRUCTION = ("Here are the items a user interacted with, oldest first, and "
                         "candidate items. Which candidate will the user choose next?")
SEARCH_INSTRUCTION = "Here is a search and candidate items. Which candidate fits it best?"
QUESTION = "Answer with the candidate's letter."
_SPLIT = "\x00MMREC-SPLIT\x00"


@dataclass(frozen=True, slots=True)
class PromptSettings:
    """Token budgets of the listwise prompt (stored with a trained re-ranker)."""

    max_history: int = 10
    """Most recent history items shown (the newest last)."""
    max_item_tokens: int = 16
    """Tokens per history line."""
    max_candidate_tokens: int = 8
    """Tokens per candidate line (after its label): the title and year, the latency's bulk."""
    candidate_genres: bool = False
    """Also show candidates' genres (about twice the tokens per candidate)."""
    max_query_tokens: int = 48
    """Tokens of a search query or context text."""

    def to_json(self) -> dict[str, int | bool]:
        """The budgets as a plain dict (artefact metadata)."""
        return {"max_history": self.max_history, "max_item_tokens": self.max_item_tokens,
                "max_candidate_tokens": self.max_candidate_tokens,
                "candidate_genres": self.candidate_genres,
                "max_query_tokens": self.max_query_tokens}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PromptSettings:
        """Budgets from :meth:`to_json`'s dict."""
        return cls(max_history=int(data["max_history"]),
                   max_item_tokens=int(data["max_item_tokens"]),
                   max_candidate_tokens=int(data["max_candidate_tokens"]),
                   candidate_genres=bool(data.get("candidate_genres", False)),
                   max_query_tokens=int(data["max_query_tokens"]))


@dataclass(frozen=True, slots=True)
class ListwisePrompt:
    """One prompt's token ids, in its three parts, and the label token of each candidate."""

    prefix: list[int]
    candidates: list[int]
    tail: list[int]
    label_ids: list[int]
    """Token id of each candidate's label, in candidate order."""

    @property
    def ids(self) -> list[int]:
        """The whole prompt."""
        return [*self.prefix, *self.candidates, *self.tail]


def render_item(record: ItemRecord, *, genres: bool = True) -> str:
    """A compact one-line description: title, then year and genres (or the text) if known."""
    title = " ".join((record.title or record.text or record.id).split())
    facts = [str(record.attributes[k]) for k in ("year",) if record.attributes.get(k)]
    listed = record.attributes.get("genres")
    if genres and isinstance(listed, (list, tuple)) and listed:
        facts.append(", ".join(str(g) for g in listed))
    elif genres and not facts and record.title and record.text:
        facts.append(" ".join(record.text.split()))
    return f"{title} ({'; '.join(facts)})" if facts else title


class PromptBuilder:
    """Builds :class:`ListwisePrompt` token ids for one tokenizer (chat template or plain)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase,
                 settings: PromptSettings | None = None) -> None:
        self.tokenizer = tokenizer
        self.settings = settings or PromptSettings()
        self.label_ids = [self._label_id(label) for label in LABELS]
        if len(set(self.label_ids)) != len(LABELS):
            raise ValueError("the tokenizer maps two candidate labels to the same token")
        self._head, self._tail = self._template_ends()

    def build(self, candidates: Sequence[ItemRecord], *,
              history: Sequence[ItemRecord] = (), query: str = "") -> ListwisePrompt:
        """The prompt for ``candidates`` given a history (recommend) and/or a query (search)."""
        return ListwisePrompt(self.prefix(history=history, query=query),
                              self.candidate_ids(candidates), self.tail(),
                              self.label_ids[:len(candidates)])

    def prefix(self, *, history: Sequence[ItemRecord] = (), query: str = "") -> list[int]:
        """Head, instruction and the history lines (the newest ``max_history``) or the query."""
        s = self.settings
        instruction = RECOMMEND_INSTRUCTION if history else SEARCH_INSTRUCTION
        ids = [*self._head, *self._encode(instruction + "\n")]
        if query:
            ids += self._encode("Search: ") + self._cut(query, s.max_query_tokens)
            ids += self._encode("\n")
        if history:
            ids += self._encode("History:\n")
            for record in list(history)[-s.max_history:]:
                ids += self._encode("- ") + self._cut(render_item(record), s.max_item_tokens)
                ids += self._encode("\n")
        return ids

    def candidate_ids(self, candidates: Sequence[ItemRecord]) -> list[int]:
        """The labelled candidate lines, in order, after their header."""
        return [*self.candidates_header(),
                *(t for line in self.candidate_lines(candidates) for t in line)]

    def candidates_header(self) -> list[int]:
        """The line that opens the candidate list."""
        return self._encode("Candidates:\n")

    def candidate_lines(self, candidates: Sequence[ItemRecord]) -> list[list[int]]:
        """One labelled line per candidate (``"A. <item>\\n"``), each within its token budget."""
        if len(candidates) > len(LABELS):
            raise ValueError(f"at most {len(LABELS)} candidates fit one listwise prompt")
        return [[*self._encode(f"{label}. "),
                 *self._cut(render_item(record, genres=self.settings.candidate_genres),
                            self.settings.max_candidate_tokens),
                 *self._encode("\n")]
                for label, record in zip(LABELS, candidates, strict=False)]

    def tail(self) -> list[int]:
        """The question and the chat template's assistant turn."""
        return [*self._encode(QUESTION), *self._tail]

    def _template_ends(self) -> tuple[list[int], list[int]]:
        """Token ids before and after the user message: chat template, or plain text + BOS."""
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": _SPLIT}],
                                                 tokenize=False, add_generation_prompt=True)
            if not isinstance(text, str) or _SPLIT not in text:
                raise ValueError("the chat template does not render the message verbatim")
            head, tail = text.split(_SPLIT)
            return self._encode(head), self._encode(tail)
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return bos, self._encode("\nAnswer:\n")

    def _label_id(self, label: str) -> int:
        """The single token a label is written as after the prompt (the answer's first token)."""
        ids = self._encode(label)
        if len(ids) != 1:
            raise ValueError(f"label {label!r} is {len(ids)} tokens for this tokenizer, not one")
        return ids[0]

    def _encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _cut(self, text: str, max_tokens: int) -> list[int]:
        """``text``'s ids, at most ``max_tokens``."""
        return self._encode(" ".join(text.split()))[:max_tokens]
