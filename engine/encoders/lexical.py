"""The lexical channel: BM25 term weights as sparse vectors, for exact words, rare names, codes.

Dense encoders blur exact titles, names, rare words and product codes; BM25
finds them. The analyzer and the term weights come from qdrant-edge's Rust BM25
model, the same one the Qdrant server runs, so vectors made here mean the same
on both store backends. Documents get BM25 term-frequency weights; queries get
term presence (weight 1 per unique term); the IDF factor is applied by the
store, whose sparse vector ``lexical`` carries Qdrant's IDF modifier, so it
always reflects the catalog as it is now.

**Codes.** The BM25 tokenizer cuts ``XK-4417`` into ``xk`` and ``4417``, and keeps
``xk4417`` whole, so the three ways of writing one code would not meet. A *code*
is a written unit mixing letters and digits (:func:`text_units`): tokens joined
by ``-``, ``.``, ``/``, ``_`` or an apostrophe (``XK-4417``, ``i7-8700K``), a short
letter prefix and a number of three digits or more apart by one space (``XK
4417``, ``ISO 9001``), or one token (``xk4417``); three characters at least, and
not an ordinal or a decade (``19th``, ``1990s``). A code of several tokens also
gives its joined lower-case form as one more term, in documents and queries
alike, so ``XK-4417``, ``xk4417`` and ``XK 4417`` all share the term ``xk4417``.
BM25 then weighs an exact code as its parts plus one rare term, and a code that
only shares a part (``XK-4471``) as that part: the exact one wins the lexical
channel. Texts without codes get exactly the vectors they got before; a text
with codes is one term longer per code, which moves its length normalisation
by well under one percent at the default ``avg_len``.
:meth:`LexicalEncoder.identifiers` names a text's codes as term ids, for the
search's exact-identifier rule (``engine.search.retriever``).

Every change to the terms a text gives bumps :data:`ANALYSER_VERSION`;
:attr:`LexicalEncoder.analyser` (version and settings) is recorded by the store,
which refuses to open a catalog indexed by another analyser.

An empty sparse vector (a text of stopwords only, or no text) is a valid result:
the store leaves it out of the item, and a query channel with it finds nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from qdrant_edge import Bm25, Bm25Config, DisabledStemmer, StopwordsSet

from engine.domain import InvalidInput, SparseVector

ANALYSER_VERSION = 2
"""The terms a text gives: 1 = qdrant-edge's BM25 analyser alone, 2 = plus joined codes."""

_TOKEN = re.compile(r"[^\W_]+")
"""A token as qdrant-edge's word tokenizer cuts it: a run of letters and digits."""
_JOINERS = frozenset("-\u2010\u2011\u2012\u2013./_'\u2019")
"""One of these between two tokens keeps them in one written unit (XK-4417, O'Reilly)."""
_SPACES = frozenset(" \u00a0")
_NOT_A_CODE = re.compile(r"\d+(?:st|nd|rd|th|s)", re.IGNORECASE)
"""Ordinals and decades (19th, 1990s) mix letters and digits but identify nothing."""
MAX_CODE_TOKENS = 6
"""A longer unit (a URL, a path) is not taken for a code."""

_WORD_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class TextUnit:
    """Tokens written as one unit: a code (``XK-4417``, ``XK 4417``), ``night-time``, a word."""

    text: str
    """The unit as written, from its first token to its last."""
    tokens: tuple[str, ...]
    code: bool
    """Whether the unit mixes letters and digits the way a code, SKU or model number does."""

    @property
    def joined(self) -> str:
        """The tokens run together, lower-cased: the one term a code of several tokens adds."""
        return "".join(self.tokens).lower()


def _is_code(tokens: Sequence[str]) -> bool:
    """Letters and digits, three characters at least, not an ordinal or a decade."""
    joined = "".join(tokens)
    return (len(tokens) <= MAX_CODE_TOKENS and len(joined) >= 3
            and any(c.isdigit() for c in joined) and any(c.isalpha() for c in joined)
            and not _NOT_A_CODE.fullmatch(joined))


def _prefix_and_number(left: str, right: str, is_word: Callable[[str], bool]) -> bool:
    """``XK 4417``: 1-4 letters (not a stopword) then a number of 3 digits or more."""
    return (left.isalpha() and len(left) <= 4 and right.isdigit() and len(right) >= 3
            and is_word(left))


def text_units(text: str, is_word: Callable[[str], bool]) -> list[TextUnit]:
    """The written units of ``text``, in order; ``is_word`` says whether a token is no stopword.

    Neighbouring tokens are one unit when a joiner (``-``, ``.``, ``/``, ``_``, an
    apostrophe) stands alone between them, or when a short letter prefix and a
    number stand one space apart (see the module docstring).
    """
    found = list(_TOKEN.finditer(text))
    units: list[TextUnit] = []
    start = 0
    for end in range(1, len(found) + 1):
        if end < len(found):
            left, right = found[end - 1], found[end]
            gap = text[left.end():right.start()]
            if gap in _JOINERS or (gap in _SPACES and _prefix_and_number(
                    left.group(), right.group(), is_word)):
                continue
        tokens = tuple(m.group() for m in found[start:end])
        units.append(TextUnit(text[found[start].start():found[end - 1].end()], tokens,
                              _is_code(tokens)))
        start = end
    return units


@dataclass(frozen=True, slots=True)
class LexicalSettings:
    """How texts are analysed and weighted; the defaults suit English catalogs.

    ``language`` picks the stemmer and stopword list (lowercase Snowball names:
    ``"english"``, ``"french"``, ...). ``k``, ``b`` and ``avg_len`` are the BM25
    parameters; set ``avg_len`` near the catalog's mean document length in terms
    (titles alone are short, descriptions long) for proper length normalisation.
    Changing any setting changes the vectors: re-index the catalog afterwards
    (the store refuses a catalog indexed with other settings).
    """

    language: str = "english"
    stemming: bool = True
    stopwords: bool = True
    lowercase: bool = True
    ascii_folding: bool = True
    """Fold accents (``café`` matches ``cafe``)."""
    k: float = 1.2
    b: float = 0.75
    avg_len: float = 256.0

    def bm25_config(self) -> Bm25Config:
        """The qdrant-edge BM25 configuration these settings describe."""
        return Bm25Config(
            k=self.k,
            b=self.b,
            avg_len=self.avg_len,
            language=self.language.lower(),
            lowercase=self.lowercase,
            ascii_folding=self.ascii_folding,
            stopwords=None if self.stopwords else StopwordsSet(),
            stemmer=None if self.stemming else DisabledStemmer(),
        )


def _sparse(indices: Sequence[int], values: Sequence[float]) -> SparseVector:
    """A ``SparseVector`` with sorted unique term ids (weights of a repeated id are summed)."""
    ids = np.asarray(indices, dtype=np.int64)
    weights = np.asarray(values, dtype=np.float32)
    unique, inverse = np.unique(ids, return_inverse=True)
    if len(unique) != len(ids):
        weights = np.bincount(inverse, weights=weights).astype(np.float32)
    else:
        weights = weights[np.argsort(ids, kind="stable")]
    return SparseVector(indices=unique, values=weights)


class LexicalEncoder:
    """BM25 sparse vectors for documents and queries, the codes a text names, and the words a
    match rests on.

    Safe to share between threads: the model is immutable after construction.
    """

    def __init__(self, settings: LexicalSettings | None = None) -> None:
        self.settings = settings or LexicalSettings()
        try:
            self._model = Bm25(self.settings.bm25_config())
        except ValueError as exc:
            raise InvalidInput(f"lexical encoder settings are not usable: {exc}") from exc
        language = self.settings.language.lower()
        details = [language, "stemmed" if self.settings.stemming else "not stemmed"]
        if not self.settings.stopwords:
            details.append("no stopwords")
        self.name = f"bm25 ({', '.join(details)})"
        self._word_terms = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._analyse_word)

    @property
    def analyser(self) -> str:
        """What decides the terms of a text (version and settings), as the store records it."""
        s = self.settings
        return (f"mmrec-bm25/{ANALYSER_VERSION} language={s.language.lower()} "
                f"stemming={s.stemming} stopwords={s.stopwords} lowercase={s.lowercase} "
                f"ascii_folding={s.ascii_folding} k={s.k} b={s.b} avg_len={s.avg_len}")

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """BM25 term-frequency weights of catalog texts, one vector per text (maybe empty)."""
        out: list[SparseVector] = []
        for text in texts:
            vector = self._model.embed_document(self._with_codes(text))
            out.append(_sparse(vector.indices, vector.values))
        return out

    def encode_queries(self, texts: Sequence[str]) -> list[SparseVector]:
        """Term presence of queries (1 per unique term); the store multiplies in the IDF."""
        out: list[SparseVector] = []
        for text in texts:
            vector = self._model.embed_query(self._with_codes(text))
            out.append(_sparse(vector.indices, vector.values))
        return out

    def terms(self, text: str) -> frozenset[int]:
        """The analysed term ids of a text (lowercased, stemmed, stopwords dropped, codes
        joined): the ids its query vector holds."""
        return frozenset(int(i) for i in self._model.embed_query(self._with_codes(text)).indices)

    def units(self, text: str) -> list[TextUnit]:
        """The written units of a text (:func:`text_units` with this analyser's stopwords)."""
        return text_units(text, self._is_word)

    def identifiers(self, text: str) -> frozenset[int]:
        """The term ids of the codes a text names, one per code: ``XK-4417``, ``xk4417`` and
        ``XK 4417`` give the same id. Empty for a text without codes."""
        found: set[int] = set()
        for unit in self.units(text):
            if unit.code:
                found |= self._word_terms(unit.joined)
        return frozenset(found)

    def matched_terms(self, query: str, document: str) -> list[str]:
        """The query's words and codes that ``document`` shares, for explanations.

        Returned as the query spells them, in query order. A unit the document holds
        whole is returned whole (``XK-4417``, ``night-time``; a code counts as held when
        its joined form is there, however the document writes it); otherwise only the
        tokens the document holds (``XK`` of ``XK-4417`` against ``XK-4471``). A token
        adding no term beyond those already returned (``running`` after ``runs``) is
        left out, and so are stopwords.
        """
        in_document = self.terms(document)
        found: list[str] = []
        claimed: set[int] = set()

        def take(spelled: str, terms: frozenset[int]) -> None:
            if terms - claimed:
                found.append(spelled)
                claimed.update(terms)

        for unit in self.units(query):
            parts = [self._word_terms(token) for token in unit.tokens]
            held = self._held_whole(unit, parts, in_document)
            if held is not None:
                take(unit.text, held)
                continue
            for token, terms in zip(unit.tokens, parts, strict=True):
                take(token, terms & in_document)
        return found

    def _held_whole(self, unit: TextUnit, parts: list[frozenset[int]],
                    in_document: frozenset[int]) -> frozenset[int] | None:
        """The terms of ``unit`` when the document holds all of it, else ``None``."""
        every = frozenset().union(*parts)
        if len(unit.tokens) == 1:
            return every & in_document or None
        if unit.code:
            joined = self._word_terms(unit.joined)
            return every | joined if joined and joined <= in_document else None
        words = [terms for terms in parts if terms]
        return every if words and all(terms <= in_document for terms in words) else None

    def _with_codes(self, text: str) -> str:
        """``text`` followed by the joined form of each code of several tokens it holds."""
        joined = [unit.joined for unit in self.units(text) if unit.code and len(unit.tokens) > 1]
        return " ".join([text, *joined]) if joined else text

    def _is_word(self, token: str) -> bool:
        """Whether a token gives a term (it is no stopword)."""
        return bool(self._word_terms(token))

    def _analyse_word(self, word: str) -> frozenset[int]:
        """The term ids of one token or joined code, by the BM25 analyser alone (cached:
        explanations and codes ask for the same words often)."""
        return frozenset(int(index) for index in self._model.embed_query(word).indices)
