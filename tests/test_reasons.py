""""Why you'll like it" reasons: the facts, the plain sentence, the faithfulness rules, and
the LLM writer on a tiny random Llama, whose gibberish the rules must catch and replace."""

from __future__ import annotations

import time

import pytest

from engine.domain import ChannelHit, FusedHit, ItemRecord, RankedItem
from engine.domain.results import ReasonFacts
from engine.rerank import LlmReranker, RerankerSpec
from engine.rerank.causal_lm import decode_one
from engine.rerank.explain import Explainer
from engine.rerank.facts import (
    MAX_CHARS,
    attribute_values,
    facts_of,
    natural_title,
    plain_sentence,
    reason_facts,
)
from engine.rerank.faithfulness import (
    EMPTY,
    FACTS,
    LLM,
    NO_TIME,
    REJECTIONS,
    REPETITIVE,
    TOO_LONG,
    UNKNOWN_TITLE,
    checked,
    corpus_distinct_2,
    distinct_2,
    rejection,
    rejection_shares,
    unknown_names,
)
from engine.rerank.reasons import Draft, ReasonWriter, _joined, fact_lines, sentence_start
from tests.tiny_llm import make_tiny_llm


def film(item_id: str, title: str, year: int, *genres: str) -> ItemRecord:
    return ItemRecord(id=item_id, title=title, text=f"A {year} film.",
                      attributes={"year": year, "genres": list(genres),
                                  "source": "movielens-100k"})


TOY = film("ml-1", "Toy Story", 1995, "Animation", "Children's", "Comedy")
LION = film("ml-71", "Lion King, The", 1994, "Animation", "Children's", "Musical")
ALADDIN = film("ml-95", "Aladdin", 1992, "Animation", "Children's", "Comedy", "Musical")
JEDI = film("ml-181", "Return of the Jedi", 1983, "Action", "Sci-Fi")
FACTS_ALADDIN = reason_facts(ALADDIN, liked=[TOY, LION], channels=["cooccurrence"])


# -- facts and the plain sentence ---------------------------------------------------------------


def test_facts_hold_titles_attributes_and_what_is_shared() -> None:
    assert ReasonFacts(
        title="Aladdin", attributes=["1992", "Animation", "Children's", "Comedy", "Musical"],
        liked=["Toy Story", "The Lion King"], shared=["Animation", "Children's", "Comedy",
                                                      "Musical"],
        channels=["cooccurrence"]) == FACTS_ALADDIN
    assert natural_title("Bicycle Thief, The (Ladri di biciclette)") == (
        "The Bicycle Thief (Ladri di biciclette)")
    assert natural_title("Sense and Sensibility") == "Sense and Sensibility"
    odd = ItemRecord(id="x", title="Thing", attributes={
        "popularity": 12, "price": 9.5, "year": 2001.0, "note": "x" * 41, "tags": ["a", 3, None],
        "flag": True, "category": "animals"})
    assert attribute_values(odd) == ["2001", "a", "animals"]  # no counts, prices or essays


def test_plain_sentence_is_built_from_the_facts() -> None:
    assert plain_sentence(FACTS_ALADDIN) == (
        "Because you liked Toy Story and The Lion King (Animation, Children's, Comedy).")
    context = reason_facts(JEDI, liked=[JEDI], query="space war", matched_terms=["war"])
    assert plain_sentence(context) == (
        "Because you liked Return of the Jedi (Action, Sci-Fi), and it matches 'war'.")
    assert plain_sentence(reason_facts(TOY, query="toy story", matched_terms=["toy", "story"])
                          ) == "Matches 'toy' and 'story'."
    assert plain_sentence(reason_facts(TOY, query="a cartoon")) == (
        "Close in meaning to 'a cartoon'.")
    assert plain_sentence(reason_facts(TOY, channels=["popularity"])) == (
        "Popular with other users.")
    assert plain_sentence(reason_facts(TOY, channels=["clip"])) == "Found by the clip channel."


def test_plain_sentence_drops_titles_to_fit_and_names_only_facts() -> None:
    long_titles = [film(f"ml-{n}", f"{word} and the Extraordinarily Long Title of Film {n}", 1990,
                        "Drama") for n, word in enumerate(["Spring", "Summer", "Autumn"])]
    facts = reason_facts(ALADDIN, liked=long_titles)
    sentence = plain_sentence(facts)
    assert len(sentence) <= MAX_CHARS
    assert sentence == ("Because you liked Spring and the Extraordinarily Long Title of Film 0 "
                        "and Summer and the Extraordinarily Long Title of Film 1.")
    samples = [FACTS_ALADDIN, facts, reason_facts(TOY, query="toy", matched_terms=["toy"]),
               reason_facts(JEDI, liked=[JEDI, TOY], query="space", matched_terms=["space"])]
    assert all(unknown_names(plain_sentence(f), f) == [] for f in samples)
    assert rejection(plain_sentence(FACTS_ALADDIN), FACTS_ALADDIN) == ""


def test_facts_are_rebuilt_from_an_explanation() -> None:
    explainer = Explainer(None, None)
    item = RankedItem(FusedHit(ALADDIN, 0.5, {"cooccurrence": ChannelHit(1, 0.9)}), 1)
    [explanation] = explainer.explain("", [item], with_reason=False, deadline=0.0,
                                      history=[[TOY, LION]])
    assert explanation.because_of == ["ml-1", "ml-71"]
    assert explanation.because_of_titles == ["Toy Story", "Lion King, The"]
    assert explanation.shared_attributes == FACTS_ALADDIN.shared
    assert (explanation.reason, explanation.reason_source) == (plain_sentence(FACTS_ALADDIN),
                                                               FACTS)
    assert facts_of(ALADDIN, explanation) == FACTS_ALADDIN


# -- the faithfulness rules ----------------------------------------------------------------------


@pytest.mark.parametrize(("sentence", "names"), [
    ("You will like Aladdin because, like Toy Story, it is a Disney animated film.", ["Disney"]),
    ("You will like Aladdin because, like 'Titanic', it is fun.", ["Titanic"]),
    ("You will like Aladdin because it is as good as \u201cthe godfather\u201d.", ["godfather"]),
    ("Aladdin is a True Classic.", ["True", "Classic"]),
])
def test_a_name_missing_from_the_facts_is_rejected(sentence: str, names: list[str]) -> None:
    assert unknown_names(sentence, FACTS_ALADDIN) == names
    assert rejection(sentence, FACTS_ALADDIN) == UNKNOWN_TITLE


@pytest.mark.parametrize("sentence", [
    "You will like Aladdin because, like Toy Story, it is an animated musical comedy.",
    "Fans of The Lion King's songs will enjoy this Children's Musical from 1992.",
    "I'm sure you will like Aladdin: like 'Toy Story', it is Animation.",
    "\u201cAladdin\u201d is a Comedy, like Toy Story.",
])
def test_names_that_are_facts_pass(sentence: str) -> None:
    assert unknown_names(sentence, FACTS_ALADDIN) == []
    assert rejection(sentence, FACTS_ALADDIN) == ""


def test_a_sentence_that_repeats_itself_is_rejected() -> None:
    degenerate = "A colorful toy, a classic toy, a story, a toy story, a story."
    looping = ("You will like Aladdin because it's an animated film, and you'll love it "
               "because it's an animated film.")
    assert distinct_2(degenerate) == pytest.approx(9 / 12)
    assert distinct_2(looping) < 0.8 < distinct_2(
        "You will like Aladdin because, like Toy Story, it is an animated comedy.") == 1.0
    facts = reason_facts(TOY)
    assert rejection(degenerate, facts) == REPETITIVE
    assert rejection(looping, FACTS_ALADDIN) == REPETITIVE
    assert corpus_distinct_2(["a b c", "a b d"]) == pytest.approx(3 / 4)


def test_long_cut_and_empty_sentences_are_rejected() -> None:
    long_words = "You will like Aladdin because " + "it is fun and " * 7 + "bright."
    assert len(long_words.split()) > 30 and len(long_words) <= MAX_CHARS
    assert rejection(long_words, FACTS_ALADDIN) == TOO_LONG
    assert rejection("You will like Aladdin " + "x" * MAX_CHARS + ".", FACTS_ALADDIN) == TOO_LONG
    fine = "You will like Aladdin because it is an animated comedy."
    assert rejection(fine, FACTS_ALADDIN, complete=False) == TOO_LONG
    for empty in ("", "   ", " . ", "Yes."):
        assert rejection(empty, FACTS_ALADDIN) == EMPTY
    assert rejection(None, FACTS_ALADDIN) == NO_TIME


def test_checked_keeps_a_passing_sentence_and_replaces_a_failing_one() -> None:
    fine = "You will like Aladdin because, like Toy Story, it is an animated comedy."
    kept = checked(f" {fine} ", FACTS_ALADDIN)
    assert (kept.text, kept.source, kept.rejected) == (fine, LLM, "")
    bad = "You will like Aladdin because it is a Disney film."
    replaced = checked(bad, FACTS_ALADDIN)
    assert (replaced.text, replaced.source, replaced.rejected, replaced.draft) == (
        plain_sentence(FACTS_ALADDIN), FACTS, UNKNOWN_TITLE, bad)
    shares = rejection_shares([kept, replaced, checked(None, FACTS_ALADDIN)])
    assert shares["any"] == pytest.approx(2 / 3) and shares[UNKNOWN_TITLE] == pytest.approx(1 / 3)
    assert set(shares) == {"any", *REJECTIONS}


# -- the LLM writer on a tiny random Llama ------------------------------------------------------


@pytest.fixture(scope="module", params=[True, False], ids=["chat-template", "plain-prompt"])
def writer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> ReasonWriter:
    folder = make_tiny_llm(tmp_path_factory.mktemp("tiny-llm"), chat_template=request.param)
    reranker = LlmReranker.from_spec(RerankerSpec(model=str(folder)))
    return ReasonWriter(reranker.model, reranker.tokenizer)


def test_the_prompt_holds_the_facts_and_the_seeded_start(writer: ReasonWriter) -> None:
    assert fact_lines(FACTS_ALADDIN) == (
        "- Item: Aladdin (1992, Animation, Children's, Comedy, Musical)\n"
        "- The user liked: Toy Story; The Lion King\n"
        "- In common with them: Animation, Children's, Comedy, Musical")
    start = sentence_start(FACTS_ALADDIN)
    assert start == "You will like Aladdin because, like Toy Story, it"
    ids = writer._prompt_ids(FACTS_ALADDIN, start)[0].tolist()
    text = " ".join(decode_one(writer.tokenizer, ids, skip_special_tokens=True).split())
    # MiniLM's tokenizer lower-cases and spaces out some punctuation.
    assert "the user liked : toy story ; the lion king" in text
    assert text.endswith("you will like aladdin because, like toy story, it")
    assert "film" not in text  # the record's own text is not a fact
    if writer.tokenizer.chat_template:
        assert "in one short sentence, say why the user will like aladdin" in text
    else:
        assert text.startswith("facts : - item : aladdin") and "one short sentence on why" in text


def test_random_llm_gibberish_is_rejected_and_replaced_by_the_plain_sentence(
        writer: ReasonWriter) -> None:
    for facts in (FACTS_ALADDIN, reason_facts(TOY, query="toy", matched_terms=["toy"])):
        draft = writer.draft(facts)
        assert draft is not None and draft.text.startswith(sentence_start(facts))
        reason = writer.write(facts)
        assert reason.draft and reason.draft.startswith(sentence_start(facts))
        assert reason.source == FACTS and reason.rejected in REJECTIONS
        assert reason.text == plain_sentence(facts)


def test_no_reason_is_started_without_time(writer: ReasonWriter) -> None:
    reason = writer(FACTS_ALADDIN, time.monotonic())
    assert (reason.source, reason.rejected, reason.text) == (
        FACTS, NO_TIME, plain_sentence(FACTS_ALADDIN))
    writer.write(FACTS_ALADDIN)  # measures its speed
    start = time.monotonic()
    assert writer.draft(FACTS_ALADDIN, deadline=start + 1e-4) is None  # declines at once
    assert time.monotonic() - start < 0.05


def test_explainer_writes_llm_reasons_only_when_asked(writer: ReasonWriter) -> None:
    explainer = Explainer(None, writer)
    items = [RankedItem(FusedHit(ALADDIN, 0.5), 1), RankedItem(FusedHit(JEDI, 0.4), 2)]
    asked = explainer.explain("", items, with_reason=True, deadline=time.monotonic() + 30,
                              history=[[TOY, LION], []])
    assert [e.reason_rejected in REJECTIONS for e in asked] == [True, True]
    assert asked[0].reason == plain_sentence(FACTS_ALADDIN)
    plain = explainer.explain("", items, with_reason=False, deadline=0.0)
    assert [(e.reason_source, e.reason_rejected) for e in plain] == [(FACTS, "")] * 2
    assert plain[1].reason == "One of the closest matches."


def test_the_draft_is_the_seeded_start_and_one_sentence_of_continuation() -> None:
    start = "You will like Aladdin because it"
    assert _joined(start, " is fun. And more", complete=True) == Draft(
        "You will like Aladdin because it is fun.", complete=True)
    assert _joined(start, "'s fun\nnext line", complete=False) == Draft(
        "You will like Aladdin because it's fun.", complete=True)
    assert _joined(start, " is fun", complete=True) == Draft(  # ended by end-of-text
        "You will like Aladdin because it is fun.", complete=True)
    assert _joined(start, " is fun and", complete=False) == Draft(
        "You will like Aladdin because it is fun and", complete=False)
    assert _joined(start, " . ", complete=True) == Draft("", complete=True)  # no word added
