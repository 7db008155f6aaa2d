"""The facts behind one result, and the plain sentence made of them alone.

:func:`reason_facts` gathers what the engine knows about why an item is in a
list (its title and descriptive attributes, the history items the recommender
attributed it to, the attribute values it shares with them, the query words it
matched, the channels that found it) into a :class:`ReasonFacts`. That record
is the whole input of the LLM's reason and the reference its sentence is
checked against (:mod:`engine.rerank.faithfulness`).

:func:`plain_sentence` is the deterministic fallback: a template filled with
the facts only, so it is always true, e.g. "Because you liked Toy Story and
Aladdin (Animation, Children's)." or "Matches 'drill'.".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from engine.domain import POPULARITY, Explanation, ItemRecord
from engine.domain.results import ReasonFacts

MAX_CHARS = 160
"""Longest reason sentence, in characters (the faithfulness check uses the same limit)."""
MAX_WORDS = 30
"""Longest reason sentence, in words."""
UNDESCRIPTIVE = frozenset({"source", "url", "uri", "image", "image_uri", "license", "sku",
                           "popularity"})
"""Attribute keys that say where an item came from, not what it is: never a fact."""
NUMERIC_FACTS = frozenset({"year"})
"""The only attribute keys whose numbers are facts (a film's year; a price or a count is not)."""
MAX_ATTRIBUTE_CHARS = 40
"""Longer attribute strings are descriptions, not values; they are left out."""
MAX_SHARED = 3
"""Shared attribute values named in the plain sentence."""
_TRAILING_ARTICLE = re.compile(
    r"^(?P<body>.+?), (?P<article>The|A|An|La|Le|Les|Il|El|Das|Der|Die)(?P<rest> \(.*\))?$")
_UNTITLED_CHARS = 60


def natural_title(title: str) -> str:
    """A title as it is said: MovieLens's "Usual Suspects, The" becomes "The Usual Suspects"."""
    title = " ".join(title.split())
    match = _TRAILING_ARTICLE.match(title)
    if not match:
        return title
    return f"{match['article']} {match['body']}{match['rest'] or ''}"


def item_title(record: ItemRecord) -> str:
    """What a sentence calls an item: its natural title, else its text's start, else its id."""
    if record.title.strip():
        return natural_title(record.title)
    text = " ".join(record.text.split())
    if text:
        return text if len(text) <= _UNTITLED_CHARS else (
            text[:_UNTITLED_CHARS].rsplit(" ", 1)[0] + "…")
    return record.id


def _attribute_texts(key: str, value: Any) -> list[str]:
    """The fact-worthy strings of one attribute (a list gives one per element)."""
    values = value if isinstance(value, list | tuple) else [value]
    out = []
    for v in values:
        if isinstance(v, str) and 0 < len(v.strip()) <= MAX_ATTRIBUTE_CHARS:
            out.append(" ".join(v.split()))
        elif (key in NUMERIC_FACTS and isinstance(v, int | float) and not isinstance(v, bool)
              and float(v).is_integer()):
            out.append(str(int(v)))
    return out


def attribute_values(record: ItemRecord) -> list[str]:
    """An item's descriptive attribute values, in attribute order, each once.

    Strings of any key but :data:`UNDESCRIPTIVE` ones, and the numbers of
    :data:`NUMERIC_FACTS` keys (a film's year and genres; a stamp's category).
    """
    values: list[str] = []
    for key, value in record.attributes.items():
        if key not in UNDESCRIPTIVE:
            values += _attribute_texts(key, value)
    return list(dict.fromkeys(values))


def shared_values(record: ItemRecord, liked: Sequence[ItemRecord]) -> list[str]:
    """The item's non-numeric attribute values that some of the ``liked`` items have too."""
    theirs = {v.casefold() for other in liked for v in attribute_values(other)}
    return [v for v in attribute_values(record) if not v.isdigit() and v.casefold() in theirs]


def reason_facts(record: ItemRecord, *, liked: Sequence[ItemRecord] = (), query: str = "",
                 matched_terms: Sequence[str] = (), channels: Sequence[str] = ()
                 ) -> ReasonFacts:
    """The facts of one result: the item, the history items behind it, the words it matched."""
    return ReasonFacts(title=item_title(record), attributes=attribute_values(record),
                       liked=[item_title(r) for r in liked],
                       shared=shared_values(record, liked), query=" ".join(query.split()),
                       matched_terms=list(matched_terms), channels=list(channels))


def facts_of(record: ItemRecord, explanation: Explanation, query: str = "") -> ReasonFacts:
    """The facts an explanation was written from, rebuilt from the result and its explanation.

    What a client holds (the record, ``because_of`` with their titles, the shared
    attributes, the matched words, the channels) is the whole input of the reason,
    so anyone can re-check a sentence; the benchmark writes reasons from these.
    """
    ids, titles = explanation.because_of, explanation.because_of_titles
    liked = [ItemRecord(id=i, title=titles[n] if n < len(titles) else "")
             for n, i in enumerate(ids)]
    return ReasonFacts(title=item_title(record), attributes=attribute_values(record),
                       liked=[item_title(r) for r in liked],
                       shared=list(explanation.shared_attributes), query=" ".join(query.split()),
                       matched_terms=list(explanation.matched_terms),
                       channels=list(explanation.channels))


def plain_sentence(facts: ReasonFacts) -> str:
    """One true sentence from the facts alone, within :data:`MAX_CHARS`.

    With history items: "Because you liked A, B and C (shared values)", plus the
    matched words; titles are dropped from the end until it fits. Without: the
    matched words, else closeness to the query, else what found the item.
    """
    matched = _and([f"'{t}'" for t in facts.matched_terms])
    if facts.liked:
        sentence = ""
        for n in range(len(facts.liked), 0, -1):
            sentence = _because(facts.liked[:n], facts.shared[:MAX_SHARED], matched)
            if len(sentence) <= MAX_CHARS and len(sentence.split()) <= MAX_WORDS:
                return sentence
        return _cut(sentence)
    if matched:
        return _cut(f"Matches {matched}.")
    if facts.query:
        return _cut(f"Close in meaning to '{facts.query}'.")
    if facts.channels == [POPULARITY]:
        return "Popular with other users."
    if facts.channels:
        names = [c for c in facts.channels if c != POPULARITY]
        return _cut(f"Found by the {_and(names)} channel{'s' if len(names) > 1 else ''}.")
    return "One of the closest matches."


def _because(titles: Sequence[str], shared: Sequence[str], matched: str) -> str:
    sentence = f"Because you liked {_and(titles)}"
    if shared:
        sentence += f" ({', '.join(shared)})"
    if matched:
        sentence += f", and it matches {matched}"
    return sentence + "."


def _and(parts: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    if len(parts) <= 1:
        return "".join(parts)
    return f"{', '.join(parts[:-1])} and {parts[-1]}"


def _cut(sentence: str) -> str:
    """A sentence over the limits cut at a word boundary, with '…' (very long titles only)."""
    words = sentence.split()
    if len(sentence) <= MAX_CHARS and len(words) <= MAX_WORDS:
        return sentence
    cut = " ".join(words[:MAX_WORDS])[:MAX_CHARS - 1]
    return cut.rsplit(" ", 1)[0].rstrip(" ,;:.") + "…"
