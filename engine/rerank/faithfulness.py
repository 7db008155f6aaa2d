"""Checks on the LLM's reason sentence; a sentence that fails one is replaced by the plain one.

A small LM writes fluent sentences that name films it was never shown, loop on
a phrase, or never stop. Each rule below is cheap, deterministic and stated
exactly, so a rejected sentence can be explained and the share of each
rejection measured (``benchmarks/reason_quality.py``). Rules, in the order
they are tried (the first failure names the rejection):

- ``empty``: fewer than :data:`MIN_WORDS` words (nothing to read as a reason);
- ``too_long``: over :data:`MAX_CHARS` characters or :data:`MAX_WORDS` words, or
  cut by the token limit before its sentence ended;
- ``repetitive``: distinct-2 (distinct word bigrams / all bigrams, lower-cased)
  below :data:`MIN_DISTINCT_2`;
- ``unknown_title``: it names something the facts do not hold. A *name* is a
  capitalised word that does not start the sentence (other than "I" and its
  contractions), or any word inside quotes; it is known when it is a word of
  the facts (item title, history titles, attribute values, query, matched words),
  compared case-insensitively without a possessive "'s". So "Because, like Star
  Wars, it is Sci-Fi" passes when Star Wars is a history title, and "a Disney
  classic" or "like 'Titanic'" fails unless the facts say Disney or Titanic.
  A title invented in lower case slips through; a capitalised ordinary word
  mid-sentence ("a True classic") is rejected: the rule prefers a plain sentence
  to an unchecked claim.

A sentence the LLM could not write in time is ``no_time``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.domain.results import ReasonFacts
from engine.rerank.facts import MAX_CHARS, MAX_WORDS, plain_sentence

LLM, FACTS = "llm", "facts"
"""``Explanation.reason_source``: the LLM's sentence, or the plain one built from the facts."""
EMPTY, TOO_LONG, REPETITIVE, UNKNOWN_TITLE, NO_TIME = (
    "empty", "too_long", "repetitive", "unknown_title", "no_time")
REJECTIONS = (EMPTY, TOO_LONG, REPETITIVE, UNKNOWN_TITLE, NO_TIME)
"""Every ``Explanation.reason_rejected`` value but "" (kept)."""
MIN_WORDS = 3
MIN_DISTINCT_2 = 0.8
"""Below this share of distinct word bigrams a sentence repeats itself. A sentence within
:data:`MAX_WORDS` rarely repeats a bigram at all (distinct-2 1.0); the degenerate outputs seen
from SmolLM2-135M score 0.74-0.75 ("A colorful toy, a classic toy, a story, a toy story, a
story"; "it's a Disney animated film, and you'll love it because it's a Disney animated
film"), which a threshold of 0.7 would keep. At 0.8 a 10-word sentence may repeat one
bigram, a 20-word one three."""
_WORD = re.compile(r"[^\W_](?:[\w'\u2019-]*[^\W_])?")
_QUOTED = re.compile(r"(?<![\w'\u2019])['\u2018\"\u201c]([^'\u2019\"\u201d\n]{1,80})"
                     r"['\u2019\"\u201d](?![\w'\u2019])")
_PRONOUN_I = frozenset({"i", "i'm", "i've", "i'll", "i'd"})
_POSSESSIVE = re.compile(r"['\u2019]s$")


@dataclass(frozen=True, slots=True)
class Reason:
    """A reason sentence, who wrote it, and why the LLM's was replaced when it was."""

    text: str
    source: str
    """:data:`LLM` or :data:`FACTS`."""
    rejected: str = ""
    """One of :data:`REJECTIONS` when the LLM's sentence was replaced; "" otherwise."""
    draft: str = ""
    """What the LLM wrote, kept or not ("" when it wrote nothing)."""


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased (apostrophes and hyphens stay inside a word)."""
    return [w.casefold() for w in _WORD.findall(text)]


def bigrams(text: str) -> list[tuple[str, str]]:
    """The word bigrams of ``text``."""
    tokens = words(text)
    return list(itertools.pairwise(tokens))


def distinct_2(text: str) -> float:
    """Distinct word bigrams over all bigrams; 1.0 for text with fewer than two words."""
    pairs = bigrams(text)
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def corpus_distinct_2(sentences: Iterable[str]) -> float:
    """Distinct-2 over many sentences (bigrams counted across all of them, none across two)."""
    pairs = [p for s in sentences for p in bigrams(s)]
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def _normal(word: str) -> str:
    return _POSSESSIVE.sub("", word.casefold())


def fact_words(facts: ReasonFacts) -> set[str]:
    """Every word the facts hold (and the parts of hyphenated ones), normalised."""
    texts = [facts.title, facts.query, *facts.attributes, *facts.liked, *facts.shared,
             *facts.matched_terms]
    known = {_normal(w) for text in texts for w in words(text)}
    return known | {part for w in known for part in w.split("-") if part}


def names(sentence: str) -> list[str]:
    """What the rule treats as names: capitalised words not opening the sentence, quoted words."""
    found = [m.group() for m in _WORD.finditer(sentence)
             if m.group()[0].isupper() and m.group().casefold() not in _PRONOUN_I
             and not _opens(sentence, m.start())]
    found += [w for quoted in _QUOTED.findall(sentence) for w in _WORD.findall(quoted)]
    return list(dict.fromkeys(found))


def _opens(sentence: str, start: int) -> bool:
    """True when nothing but quotes and spaces precede ``start`` (the sentence's first word)."""
    return not sentence[:start].strip(" \"'\u201c\u2018(")


def unknown_names(sentence: str, facts: ReasonFacts) -> list[str]:
    """The names in ``sentence`` that are not words of the facts."""
    known = fact_words(facts)
    return [n for n in names(sentence) if _normal(n) not in known]


def rejection(sentence: str | None, facts: ReasonFacts, *, complete: bool = True) -> str:
    """The first rule ``sentence`` fails (see the module docstring), or "" when it passes.

    ``complete`` False says generation hit its token limit before the sentence ended.
    """
    if sentence is None:
        return NO_TIME
    if len(words(sentence)) < MIN_WORDS:
        return EMPTY
    if not complete or len(sentence) > MAX_CHARS or len(words(sentence)) > MAX_WORDS:
        return TOO_LONG
    if distinct_2(sentence) < MIN_DISTINCT_2:
        return REPETITIVE
    if unknown_names(sentence, facts):
        return UNKNOWN_TITLE
    return ""


def checked(draft: str | None, facts: ReasonFacts, *, complete: bool = True) -> Reason:
    """The LLM's sentence when it passes every rule, else the plain sentence with the rule."""
    why = rejection(draft, facts, complete=complete)
    if not why and draft is not None:
        return Reason(draft.strip(), LLM, draft=draft)
    return Reason(plain_sentence(facts), FACTS, rejected=why, draft=draft or "")


def rejection_shares(reasons: Sequence[Reason]) -> dict[str, float]:
    """The share of ``reasons`` rejected for each rule, and ``"any"`` for all of them."""
    total = len(reasons) or 1
    shares = {rule: sum(r.rejected == rule for r in reasons) / total for rule in REJECTIONS}
    return {"any": sum(shares.values()), **shares}
