"""The lexical channel: BM25 term weights as sparse vectors, for exact words and rare names.

Dense encoders blur exact titles, names and rare words; BM25 finds them. The
analyzer and the term weights come from qdrant-edge's Rust BM25 model, the same
one the Qdrant server runs, so vectors made here mean the same on both store
backends. Documents get BM25 term-frequency weights; queries get term presence
(weight 1 per unique term); the IDF factor is applied by the store, whose sparse
vector ``lexical`` carries Qdrant's IDF modifier, so it always reflects the
catalog as it is now.

An empty sparse vector (a text of stopwords only, or no text) is a valid result:
the store leaves it out of the item, and a query channel with it finds nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from qdrant_edge import Bm25, Bm25Config, DisabledStemmer, StopwordsSet

from engine.domain import InvalidInput, SparseVector

_WORD = re.compile(r"\w+(?:['\u2019.\-]\w+)*")
"""A query word as a person reads it: letters and digits, inner apostrophes, dots, hyphens."""

_WORD_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class LexicalSettings:
    """How texts are analysed and weighted; the defaults suit English catalogs.

    ``language`` picks the stemmer and stopword list (lowercase Snowball names:
    ``"english"``, ``"french"``, ...). ``k``, ``b`` and ``avg_len`` are the BM25
    parameters; set ``avg_len`` near the catalog's mean document length in terms
    (titles alone are short, descriptions long) for proper length normalisation.
    Changing any setting changes the vectors: re-index the catalog afterwards.
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
    """BM25 sparse vectors for documents and queries, and the words a match rests on.

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

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """BM25 term-frequency weights of catalog texts, one vector per text (maybe empty)."""
        out: list[SparseVector] = []
        for text in texts:
            vector = self._model.embed_document(text)
            out.append(_sparse(vector.indices, vector.values))
        return out

    def encode_queries(self, texts: Sequence[str]) -> list[SparseVector]:
        """Term presence of queries (1 per unique term); the store multiplies in the IDF."""
        out: list[SparseVector] = []
        for text in texts:
            vector = self._model.embed_query(text)
            out.append(_sparse(vector.indices, vector.values))
        return out

    def terms(self, text: str) -> frozenset[int]:
        """The analysed term ids of a text (lowercased, stemmed, stopwords dropped)."""
        return frozenset(int(index) for index in self._model.embed_query(text).indices)

    def _analyse_word(self, word: str) -> frozenset[int]:
        """The term ids of one query word (cached: explanations ask for the same words often)."""
        return self.terms(word)

    def matched_terms(self, query: str, document: str) -> list[str]:
        """The query's words whose analysed terms occur in ``document``, for explanations.

        Words are returned as the query spells them, in query order; a word adding
        no term beyond those of words already returned (``running`` after ``runs``)
        is left out, and so are stopwords.
        """
        in_document = self.terms(document)
        found: list[str] = []
        claimed: set[int] = set()
        for word in _WORD.findall(query):
            matched = self._word_terms(word) & in_document
            if matched - claimed:
                found.append(word)
                claimed |= matched
        return found
