"""Fuzzing every RPC of mmrec.v1.Recommender over real gRPC on loopback.

Each RPC gets requests generated from its proto descriptor (every field, with awkward
values: :mod:`tests.proto_strategies`), raw and mutated bytes sent through a generic
``unary_unary``/``stream_unary`` with no serializer, and, for the streaming RPCs, streams
that mix good messages with garbage. The pass criteria:

* no call is answered INTERNAL or UNKNOWN (a client's mistake is INVALID_ARGUMENT, or
  another specific code), and every OK reply parses as the RPC's response message;
* the server survives: afterwards health says SERVING and a known good Search (in a tenant
  the fuzz never names) still puts the expected item first;
* memory stays flat: the RSS after the run is within ``RSS_BOUND_MIB`` of the RSS after a
  warm-up fuzz of every RPC. The server runs in this process (a grpc.aio server on its own
  thread, :class:`tests.conftest.ServerThread`), so the figure is this process's RSS from
  /proc/self/statm, after a ``gc.collect()``: server, client and Hypothesis together, which
  can only overstate the server's growth.

Deterministic: Hypothesis is derandomized (its seed is derived from each test), with no
example database. Sizes: ``MMREC_FUZZ_EXAMPLES`` (default 120) examples per RPC for
generated messages, half as many for raw bytes; a larger run, niced::

    MMREC_FUZZ_EXAMPLES=1000 MMREC_FUZZ_REPORT=/tmp/fuzz.json \\
        nice -n 10 .venv/bin/pytest -q tests/test_fuzz.py

The counts of requests per RPC and per status code, and the RSS figures, are printed
(``-s`` shows them) and written as JSON to ``MMREC_FUZZ_REPORT`` or, without it, to
``fuzz-report.json`` in pytest's temporary folder of the run.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.runtime.engine import Engine
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.wire import SERVICE
from tests.conftest import ServerThread, make_config, png_bytes
from tests.proto_strategies import MessageStrategies, length_delimited, nested_values
from tests.tiny_models import make_tiny_clip_settings

EXAMPLES = int(os.environ.get("MMREC_FUZZ_EXAMPLES", "120"))
RAW_EXAMPLES = max(EXAMPLES // 2, 10)
WARMUP_EXAMPLES = 25
RSS_BOUND_MIB = 48.0
RSS_BOUND_KIB_PER_REQUEST = 8.0
"""Growth of RSS allowed between the warm-up and the end: a base plus a little per request,
since the fuzz stores the items and events it gets past validation (the 500-example run
grew 36 MiB over 5,500 requests) and the allocator keeps what it once held. A leak of a
request's bytes, a response or a decoded image per call is well over the per-request part."""
CALL_TIMEOUT = 30.0
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

SENTINEL_TENANT = "fuzz-sentinel-4f1c"
"""The tenant of the known good items; it is in no vocabulary, so the fuzz never names it."""
APPLE = pb.Item(id="apple", title="Red apple", text="A shiny red apple from the orchard.",
                attributes={"price": 1.5, "tags": ["fruit"], "year": 2020})
BIKE = pb.Item(id="bike", title="Mountain bike", text="Full suspension bike for rough trails.")
APPLE_QUERY = "Red apple. A shiny red apple from the orchard."

VOCABULARY = [
    "apple", "bike", "vase", "good-0", "good-1", " apple ", "u1", "u2", "default", "other",
    "fused", "clip", "text", "lexical", "behaviour", "cooccurrence", "popularity", "profile",
    "view", "click", "purchase", "rating", "like", "dislike", "add_to_cart", "price", "year",
    "tags", "genres", "fruit", "red apple", "XK-4417",
]
"""Words the server knows, so a share of the generated requests pass validation."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


HUGE_PNG = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000,
                                                                    100_000, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
"""A valid PNG header claiming 10^10 pixels: a decompression bomb."""
IMAGES = [png_bytes(7), png_bytes(8, size=8, mode="L"), png_bytes(9)[:60], HUGE_PNG,
          b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\x00" * 250_000, b"\xff\xd8\xff\xe0" + b"\x00" * 40]
"""Valid, truncated, bomb and oversized images for every bytes field."""

METHODS = {m.name: m for m in SERVICE.methods}
VALID_IMAGES = [png_bytes(7), png_bytes(8, size=8, mode="L")]
STRATEGIES = MessageStrategies(VOCABULARY, IMAGES, VALID_IMAGES)


def rss_mib() -> float:
    """This process's resident set size now, in MiB (after collecting garbage)."""
    gc.collect()
    resident = int(Path("/proc/self/statm").read_text().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE") / 2**20


class FuzzTarget:
    """A live server, a channel to it with bytes-in/bytes-out calls, and the tally of codes."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.target)
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in METHODS}
        self.calls: dict[str, Callable[..., Any]] = {}
        for name, method in METHODS.items():
            path = f"/{SERVICE.full_name}/{name}"  # no serializers: bytes go as they are
            self.calls[name] = (self.channel.stream_unary(path) if method.client_streaming
                                else self.channel.unary_unary(path))
        self.rss_after_warmup = 0.0

    def send(self, rpc: str, payload: bytes | list[bytes]) -> grpc.StatusCode:
        """Send one request (a stream for a streaming RPC), count its code, and fail on
        INTERNAL, UNKNOWN, or an OK reply that is not the RPC's response message."""
        method = METHODS[rpc]
        request = iter(payload) if method.client_streaming else payload
        details = ""
        try:
            reply = self.calls[rpc](request, timeout=CALL_TIMEOUT)
            code = grpc.StatusCode.OK
            response = GetMessageClass(method.output_type).FromString(reply)
            if method.client_streaming:
                _check_stream_report(rpc, len(payload), response)
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        self.counts[rpc][code.name] += 1
        assert code not in BAD_CODES, (
            f"{rpc} answered {code.name}: {details!r}; request {_shown(payload)}")
        return code

    def close(self) -> None:
        self.channel.close()


def _check_stream_report(rpc: str, sent: int, response: Any) -> None:
    """A streaming RPC's reply accounts for every message sent: each rejected one by its
    index within the stream, once; for events, each one either recorded or rejected."""
    indices = [r.index for r in response.rejected]
    assert len(set(indices)) == len(indices) and all(0 <= i < sent for i in indices), (
        rpc, sent, indices)
    if rpc == "RecordEvents":
        assert response.recorded + len(indices) == sent, (rpc, sent, response)
    elif rpc == "UpsertItems":  # a later copy of an id in the stream replaces the earlier
        assert response.upserted + len(indices) <= sent, (rpc, sent, response)


def _shown(payload: bytes | list[bytes]) -> str:
    """A request's bytes, cut short enough for an assertion message."""
    text = repr(payload)
    return text if len(text) < 600 else text[:600] + f"... ({len(text)} chars)"


def fuzz_settings(examples: int) -> settings:
    """Deterministic, deadline-free Hypothesis settings for ``examples`` requests."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


def requests(rpc: str) -> st.SearchStrategy[bytes | list[bytes]]:
    """Generated request messages of ``rpc`` as bytes; for a streaming RPC, streams of them
    with garbage and truncated messages mixed in."""
    method = METHODS[rpc]
    messages = STRATEGIES.any(method.input_type).map(lambda m: m.SerializeToString())
    if not method.client_streaming:
        return messages
    garbage = st.one_of(st.binary(max_size=48), mutated(messages))
    parts = st.one_of(messages, messages, garbage)
    return st.lists(parts, max_size=6)


def raw_bytes(rpc: str) -> st.SearchStrategy[bytes | list[bytes]]:
    """Random bytes and mutated valid messages (bits flipped, cut short, spliced), alone or
    as the messages of a stream."""
    method = METHODS[rpc]
    valid = STRATEGIES.tame(method.input_type).map(lambda m: m.SerializeToString())
    one = st.one_of(st.binary(max_size=256), mutated(valid))
    return st.lists(one, max_size=5) if method.client_streaming else one


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base``'s bytes after one to three random edits."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        at = draw(st.integers(0, len(data))) if data else 0
        if edit == "flip" and data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            data += data[:at]
    return bytes(data)


def run_fuzz(target: FuzzTarget, rpc: str, strategy: st.SearchStrategy[Any],
             examples: int) -> None:
    """Send ``examples`` requests drawn from ``strategy`` to ``rpc``."""

    @fuzz_settings(examples)
    @given(strategy)
    def case(payload: bytes | list[bytes]) -> None:
        target.send(rpc, payload)

    case()


def seed(target: FuzzTarget) -> None:
    """Known items in the default tenant (which the fuzz may overwrite and delete) and in
    the sentinel tenant (which it cannot name), and one user's history."""
    sentinel = [pb.Item(id=i.id, tenant=SENTINEL_TENANT, title=i.title, text=i.text)
                for i in (APPLE, BIKE)]
    others = [APPLE, BIKE, pb.Item(id="vase", title="Blue vase", image=png_bytes(8)),
              *[pb.Item(id=f"good-{i}", title=f"Good item {i}") for i in range(4)]]
    reply = pb.UpsertItemsResponse.FromString(target.calls["UpsertItems"](
        iter([pb.UpsertItemsRequest(item=i).SerializeToString() for i in sentinel + others]),
        timeout=60))
    assert reply.upserted == len(sentinel) + len(others) and not reply.rejected
    events = [pb.Event(user_id="u1", item_id=i, kind="view").SerializeToString()
              for i in ("apple", "bike", "vase")]
    assert pb.RecordEventsResponse.FromString(target.calls["RecordEvents"](
        iter(events), timeout=30)).recorded == 3


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, tiny_text_dir: Path
           ) -> Iterator[FuzzTarget]:
    """A seeded server on tiny models after a warm-up fuzz of every RPC; the report of
    codes and RSS is written when the module ends."""
    folder = tmp_path_factory.mktemp("fuzz")
    config = make_config(folder / "store", tiny_text_dir, make_tiny_clip_settings())
    engine = Engine.from_config(config)
    server = ServerThread(engine, config)
    fuzz = FuzzTarget(server)
    try:
        seed(fuzz)
        for rpc in METHODS:
            run_fuzz(fuzz, rpc, requests(rpc), WARMUP_EXAMPLES)
        warmup = {rpc: dict(counter) for rpc, counter in fuzz.counts.items()}
        for counter in fuzz.counts.values():
            counter.clear()
        fuzz.rss_after_warmup = rss_mib()
        yield fuzz
        report = {
            "examples_per_rpc": EXAMPLES, "raw_examples_per_rpc": RAW_EXAMPLES,
            "requests": {rpc: dict(sorted(c.items())) for rpc, c in fuzz.counts.items()},
            "requests_per_rpc": {rpc: sum(c.values()) for rpc, c in fuzz.counts.items()},
            "codes": dict(sorted(sum(fuzz.counts.values(), Counter()).items())),
            "warmup_requests": warmup,
            "rss_mib": {"after_warmup": round(fuzz.rss_after_warmup, 1),
                        "after_run": round(rss_mib(), 1),
                        "bound_of_growth": round(rss_bound(sum(
                            sum(c.values()) for c in fuzz.counts.values())), 1)},
        }
        path = Path(os.environ.get("MMREC_FUZZ_REPORT") or folder / "fuzz-report.json")
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nfuzz report ({path}):\n{json.dumps(report, indent=2)}")
    finally:
        fuzz.close()
        server.stop()
        engine.close()


@pytest.mark.parametrize("rpc", list(METHODS))
def test_generated_requests_are_never_internal_or_unknown(target: FuzzTarget, rpc: str) -> None:
    run_fuzz(target, rpc, requests(rpc), EXAMPLES)


@pytest.mark.parametrize("rpc", list(METHODS))
def test_raw_and_mutated_bytes_are_never_internal_or_unknown(target: FuzzTarget,
                                                             rpc: str) -> None:
    run_fuzz(target, rpc, raw_bytes(rpc), RAW_EXAMPLES)


def test_values_nested_past_the_recursion_limit_are_invalid_argument(
        target: FuzzTarget) -> None:
    deep = nested_values(150)
    field = length_delimited
    condition = field(1, b"year") + field(2, deep)  # Condition.key and .equals
    search = field(1, b"x") + field(7, field(1, condition))  # .text and .filter.must
    attributes = field(1, field(1, b"dims") + field(2, deep))  # one entry of Struct.fields
    item = field(1, b"deep") + field(3, b"Deep") + field(7, attributes)  # id, title, attributes
    assert target.send("Search", search) == grpc.StatusCode.INVALID_ARGUMENT
    code = target.send("UpsertItems", [field(1, item), pb.UpsertItemsRequest(
        item=pb.Item(id="shallow", title="Shallow")).SerializeToString()])
    assert code == grpc.StatusCode.OK  # the deep one is reported by index, the other stored


def test_the_server_survives_with_flat_memory(target: FuzzTarget) -> None:
    """Runs last in this module: every RPC was fuzzed, the server answers, memory is flat."""
    health = health_pb2_grpc.HealthStub(target.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    search = pb.SearchRequest(text=APPLE_QUERY, tenant=SENTINEL_TENANT, top_k=2)
    found = pb.SearchResponse.FromString(target.calls["Search"](search.SerializeToString(),
                                                                timeout=30))
    assert [r.id for r in found.results] == ["apple", "bike"]
    fuzzed = {rpc: sum(c.values()) for rpc, c in target.counts.items()}
    if all(fuzzed.values()):  # the whole module ran (not a -k selection of this test)
        for rpc, count in fuzzed.items():  # GetInfoRequest has no field: one message exists
            assert count >= (EXAMPLES if METHODS[rpc].input_type.fields else RAW_EXAMPLES), rpc
    growth = rss_mib() - target.rss_after_warmup
    bound = rss_bound(sum(fuzzed.values()))
    assert growth < bound, f"RSS grew {growth:.1f} MiB after the warm-up (bound {bound:.1f})"


def rss_bound(requests: int) -> float:
    """The RSS growth in MiB allowed over ``requests`` requests after the warm-up."""
    return RSS_BOUND_MIB + requests * RSS_BOUND_KIB_PER_REQUEST / 1024
