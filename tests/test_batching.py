"""Dynamic micro-batching of query encoding (engine.batching, Vectoriser.query).

Batches are made to form deterministically: a gate holds the first forward pass while
other callers queue behind it, and the test waits for the queue to hold them before it
opens the gate. Every batched vector is compared with the same query encoded alone, on
the real tiny text model (and the tiny CLIP); nothing here asserts speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.batching import MicroBatcher
from engine.config import EngineConfig, QueryBatchingSettings, TextEncoderSettings
from engine.domain import CLIP, TEXT, EncodedQuery, SparseVector
from engine.encoders import (
    ClipEncoder,
    LexicalEncoder,
    LexicalSettings,
    TextEncoder,
    create_clip_encoder,
    create_text_encoder,
)
from engine.encoders.fusion import VectorFuser
from engine.encoders.vectoriser import Vectoriser
from tests.tiny_models import make_tiny_clip_settings

PATIENCE = 30.0
"""Seconds a test waits for a thread or a condition before failing (never reached)."""
FOREVER_MS = 600_000.0
"""A window no test may wait out: a call that returns did not pay it."""
LONGEST_MS = 1000.0
"""The longest window the settings allow."""


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (fails after PATIENCE seconds)."""
    end = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < end, "condition never held"
        time.sleep(0.001)


class Gated:
    """Records each batch a forward pass gets and can hold the passes at a gate."""

    def __init__(self, forward: Callable[[list[Any]], Any]) -> None:
        self.forward = forward
        self.batches: list[list[Any]] = []
        self.threads: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self, values: Sequence[Any]) -> Any:
        with self._lock:
            self.batches.append(list(values))
            self.threads.append(threading.get_ident())
        assert self.gate.wait(PATIENCE)
        if self.fail is not None:
            raise self.fail
        return self.forward(list(values))


class GatedTextEncoder:
    """The real tiny text encoder with its query passes counted and held by a gate."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.queries = Gated(inner.encode_queries)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode_documents(texts)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        result: np.ndarray = self.queries(texts)
        return result


class Caller(threading.Thread):
    """Calls ``fn(*args, **kwargs)`` once on its own thread; keeps the result or the error."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.call = partial(fn, *args, **kwargs)
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> Any:
        self.join(PATIENCE)
        assert not self.is_alive(), "the call is still waiting"
        return self.result


def started(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Caller:
    """A running :class:`Caller`."""
    caller = Caller(fn, *args, **kwargs)
    caller.start()
    return caller


def hold_first(gated: Gated, fn: Callable[..., Any], *args: Any) -> Caller:
    """Start ``fn(*args)`` and keep its forward pass at the gate, so later callers queue."""
    gated.gate.clear()
    caller = started(fn, *args)
    wait_until(lambda: len(gated.batches) == 1)
    return caller


def queue_in_order(batcher: MicroBatcher[Any, Any], fn: Callable[..., Any],
                   inputs: Sequence[tuple[Any, ...]]) -> list[Caller]:
    """One caller of ``fn`` per input, each started once the one before it has queued."""
    callers: list[Caller] = []
    for args in inputs:
        callers.append(started(fn, *args))
        wait_until(lambda: batcher.queued == len(callers))
    return callers


@pytest.fixture(scope="module")
def text_encoder(tiny_text_dir: Path) -> TextEncoder:
    return create_text_encoder(TextEncoderSettings(model=str(tiny_text_dir)), "cpu")


@pytest.fixture(scope="module")
def clip_encoder() -> ClipEncoder:
    settings = make_tiny_clip_settings().model_copy(update={"batch_size": 64})
    return create_clip_encoder(settings, "cpu")


def vectoriser(text: TextEncoder, clip: ClipEncoder | None,
               batching: QueryBatchingSettings | None) -> Vectoriser:
    dims = {TEXT: text.dim, **({CLIP: clip.dim} if clip is not None else {})}
    return Vectoriser(text=text, clip=clip, lexical=LexicalEncoder(LexicalSettings()),
                      fuser=VectorFuser(dims, dict.fromkeys(dims, 1.0)), image_weight=0.5,
                      clip_off_reason="off in this test", batching=batching)


def batching(window_ms: float = 0.0, max_batch: int = 32) -> QueryBatchingSettings:
    return QueryBatchingSettings(window_ms=window_ms, max_batch=max_batch)


def assert_same(got: EncodedQuery, want: EncodedQuery) -> None:
    """The same channels, dense rows equal to float rounding, sparse vectors exactly."""
    assert set(got.vectors) == set(want.vectors)
    for name, vector in want.vectors.items():
        mine = got.vectors[name]
        if isinstance(vector, SparseVector):
            assert isinstance(mine, SparseVector)
            np.testing.assert_array_equal(mine.indices, vector.indices)
            np.testing.assert_array_equal(mine.values, vector.values)
        else:
            assert isinstance(mine, np.ndarray)
            np.testing.assert_allclose(mine, vector, atol=1e-5)


def the_batcher(batched: Vectoriser) -> MicroBatcher[Any, Any]:
    """The vectoriser's batcher (batching is on in the test)."""
    assert batched.batcher is not None
    return batched.batcher


def call_with_deadline(batcher: MicroBatcher[str, str], value: str,
                       seconds: float | None) -> str:
    """``batcher(value)`` with a deadline ``seconds`` from now (None: no deadline)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    return batcher(value, deadline=deadline)


QUERIES = ["red apple", "mountain bike", "a blue clay vase for the garden", "red apple",
           "XK-4417 drill", "bike", "green pear and a road bike", "mountain bike"]


def test_concurrent_queries_get_exactly_their_own_vectors(text_encoder: TextEncoder,
                                                          clip_encoder: ClipEncoder) -> None:
    alone = vectoriser(text_encoder, clip_encoder, None)
    batched = vectoriser(text_encoder, clip_encoder, batching(window_ms=5, max_batch=5))
    batcher = the_batcher(batched)
    texts = QUERIES * 3  # duplicates, in batches of every composition
    start = threading.Barrier(len(texts))

    def call(text: str) -> EncodedQuery:
        start.wait(PATIENCE)
        return batched.query(text, None)

    callers = [started(call, text) for text in texts]
    for text, caller in zip(texts, callers, strict=True):
        assert_same(caller.finish(), alone.query(text, None))
    sizes = batcher.batch_sizes()
    assert sum(size * n for size, n in sizes.items()) == len(texts)
    assert max(sizes) <= 5


def test_queued_queries_share_one_forward_pass(text_encoder: TextEncoder) -> None:
    gated = GatedTextEncoder(text_encoder)
    batched = vectoriser(gated, None, batching(window_ms=LONGEST_MS, max_batch=5))
    batcher = the_batcher(batched)
    first = hold_first(gated.queries, batched.query, "first", None)
    texts = ["road bike", "red apple", "road bike", "clay pot", "a pear"]
    callers = [started(batched.query, text, None) for text in texts]  # in any order
    wait_until(lambda: batcher.queued == len(texts))
    gated.queries.gate.set()
    alone = vectoriser(text_encoder, None, None)
    assert_same(first.finish(), alone.query("first", None))
    for text, caller in zip(texts, callers, strict=True):
        assert_same(caller.finish(), alone.query(text, None))
    # the lone first query ran at once; the five queued ones filled one batch (no window)
    assert [sorted(batch) for batch in gated.queries.batches] == [["first"], sorted(texts)]


def test_max_batch_is_respected_in_arrival_order() -> None:
    gated = Gated(lambda values: [value * 10 for value in values])
    batcher: MicroBatcher[int, int] = MicroBatcher(gated, window_ms=0.0, max_batch=3)
    first = hold_first(gated, batcher, 0)
    callers = queue_in_order(batcher, batcher, [(value,) for value in range(1, 8)])
    gated.gate.set()
    assert first.finish() == 0
    assert [caller.finish() for caller in callers] == [value * 10 for value in range(1, 8)]
    assert gated.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    assert batcher.batch_sizes() == {1: 2, 3: 2}


def test_duplicate_inputs_each_get_their_row() -> None:
    gated = Gated(lambda values: [f"{value}#{i}" for i, value in enumerate(values)])
    batcher: MicroBatcher[str, str] = MicroBatcher(gated, window_ms=0.0, max_batch=8)
    first = hold_first(gated, batcher, "a")
    callers = queue_in_order(batcher, batcher, [("b",), ("b",), ("c",), ("b",)])
    gated.gate.set()
    assert first.finish() == "a#0"
    assert [caller.finish() for caller in callers] == ["b#0", "b#1", "c#2", "b#3"]


def test_a_lone_call_does_not_wait_for_the_window() -> None:
    gated = Gated(lambda values: values)
    batcher: MicroBatcher[str, str] = MicroBatcher(gated, window_ms=FOREVER_MS, max_batch=8)
    assert started(batcher, "alone").finish() == "alone"
    assert started(batcher, "again").finish() == "again"
    assert gated.batches == [["alone"], ["again"]]


def test_a_deadline_ends_the_window_for_the_whole_batch() -> None:
    gated = Gated(lambda values: values)
    batcher: MicroBatcher[str, str] = MicroBatcher(gated, window_ms=FOREVER_MS, max_batch=8)
    first = hold_first(gated, batcher, "first")
    # "patient" heads the next batch and alone would wait the window out; "hurried" may not
    callers = queue_in_order(batcher, call_with_deadline,
                             [(batcher, "patient", None), (batcher, "hurried", 0.05)])
    gated.gate.set()
    assert first.finish() == "first"
    assert [caller.finish() for caller in callers] == ["patient", "hurried"]
    assert gated.batches == [["first"], ["patient", "hurried"]]


def test_a_past_deadline_starts_at_once() -> None:
    gated = Gated(lambda values: values)
    batcher: MicroBatcher[str, str] = MicroBatcher(gated, window_ms=FOREVER_MS, max_batch=8)
    first = hold_first(gated, batcher, "first")
    (late,) = queue_in_order(batcher, call_with_deadline, [(batcher, "late", -1.0)])
    gated.gate.set()
    assert (first.finish(), late.finish()) == ("first", "late")


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_works() -> None:
    gated = Gated(lambda values: [value.upper() for value in values])
    batcher: MicroBatcher[str, str] = MicroBatcher(gated, window_ms=0.0, max_batch=8)
    first = hold_first(gated, batcher, "first")
    callers = queue_in_order(batcher, batcher, [("x",), ("y",), ("z",)])
    gated.fail = ValueError("the model broke")
    gated.gate.set()
    for caller in [first, *callers]:
        caller.finish()
        assert isinstance(caller.error, ValueError) and str(caller.error) == "the model broke"
    assert gated.batches == [["first"], ["x", "y", "z"]]
    gated.fail = None
    assert started(batcher, "later").finish() == "LATER"
    assert batcher.queued == 0


def test_a_forward_that_loses_rows_fails_its_batch() -> None:
    batcher: MicroBatcher[str, str] = MicroBatcher(lambda values: values[1:], window_ms=0.0,
                                                   max_batch=8)
    with pytest.raises(RuntimeError, match="returned 0 rows for 1 inputs"):
        batcher("lost")


def test_an_encoder_error_reaches_every_query_and_batching_goes_on(
        text_encoder: TextEncoder) -> None:
    gated = GatedTextEncoder(text_encoder)
    batched = vectoriser(gated, None, batching(window_ms=0.0))
    batcher = the_batcher(batched)
    first = hold_first(gated.queries, batched.query, "first", None)
    callers = [started(batched.query, text, None) for text in QUERIES[:4]]
    wait_until(lambda: batcher.queued == 4)
    gated.queries.fail = RuntimeError("CUDA out of memory")
    gated.queries.gate.set()
    for caller in [first, *callers]:
        caller.finish()
        assert isinstance(caller.error, RuntimeError)
    gated.queries.fail = None
    assert_same(batched.query("red apple", None),
                vectoriser(text_encoder, None, None).query("red apple", None))


def test_image_and_text_queries_batch_together(text_encoder: TextEncoder,
                                               clip_encoder: ClipEncoder) -> None:
    images = [Image.new("RGB", (40, 40), colour) for colour in ("red", "blue")]
    queries: list[tuple[str, Image.Image | None]] = [
        ("red apple", None), ("", images[0]), ("a blue vase", images[1]), ("bike", None)]
    gated = GatedTextEncoder(text_encoder)
    batched = vectoriser(gated, clip_encoder, batching(window_ms=0.0))
    first = hold_first(gated.queries, batched.query, "first", None)
    callers = queue_in_order(the_batcher(batched), batched.query, queries)
    gated.queries.gate.set()
    first.finish()
    alone = vectoriser(text_encoder, clip_encoder, None)
    for (text, image), caller in zip(queries, callers, strict=True):
        assert_same(caller.finish(), alone.query(text, image))
    # the image-only query has no text row: the text pass of the batch read three texts
    assert gated.queries.batches == [["first"], ["red apple", "a blue vase", "bike"]]


def test_batching_off_calls_the_encoder_directly(text_encoder: TextEncoder) -> None:
    gated = GatedTextEncoder(text_encoder)
    direct = vectoriser(gated, None, QueryBatchingSettings(enabled=False))
    assert direct.batcher is None
    gated.queries.gate.clear()
    callers = [started(direct.query, text, None) for text in QUERIES[:3]]
    wait_until(lambda: len(gated.queries.batches) == 3)  # all inside the model at once
    gated.queries.gate.set()
    for caller in callers:
        caller.finish()
    assert sorted(gated.queries.batches) == sorted([text] for text in QUERIES[:3])
    assert set(gated.queries.threads) == {caller.ident for caller in callers}


def test_a_lone_query_runs_on_its_own_thread(text_encoder: TextEncoder) -> None:
    gated = GatedTextEncoder(text_encoder)
    batched = vectoriser(gated, None, batching(window_ms=LONGEST_MS))
    caller = started(batched.query, "alone", None)
    caller.finish()
    assert gated.queries.threads == [caller.ident]


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = EngineConfig.load().query_batching
    assert (defaults.enabled, defaults.window_ms, defaults.max_batch) == (True, 2.0, 32)
    monkeypatch.setenv("MMREC_QUERY_BATCHING__ENABLED", "false")
    monkeypatch.setenv("MMREC_QUERY_BATCHING__WINDOW_MS", "5")
    monkeypatch.setenv("MMREC_QUERY_BATCHING__MAX_BATCH", "8")
    loaded = EngineConfig.load().query_batching
    assert (loaded.enabled, loaded.window_ms, loaded.max_batch) == (False, 5.0, 8)
    with pytest.raises(ValueError):
        EngineConfig.load(query_batching={"max_batch": 0})
