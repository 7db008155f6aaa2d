"""The soak's load: closed-loop client streams mixing Search, Recommend, RecordEvents and
UpsertItems, each call timed and its outcome recorded.

Each stream is a thread with its own :class:`MmrecClient` (its own channel) that sends
its next request as soon as the last one answered, until the deadline. Per request it
draws the RPC from :data:`MIX`, then the request's shape (see each ``_call_*``) from a
per-stream seeded RNG. An answer that breaks its contract (a search or recommendation
with no hits, fewer events recorded than sent) is an error ``BAD_ANSWER``, an exception in
the client ``CLIENT <type>``; RESOURCE_EXHAUSTED (admission control) is shed load, kept apart
from errors.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from benchmarks.soak.data import SEED_EVENTS, SoakData
from engine.client import MmrecClient
from engine.domain import Event, ItemFilter, MatchAny, MmrecError, Range

MIX: dict[str, float] = {"Search": 0.40, "Recommend": 0.35, "RecordEvents": 0.15,
                         "UpsertItems": 0.10}
"""Share of each RPC among the requests sent."""
SHED = "RESOURCE_EXHAUSTED"
FREE_QUERIES = ("a romantic comedy in New York", "space adventure with aliens",
                "a cartoon for children", "gangsters and crime", "a war film",
                "horror in a small town", "a musical", "detective mystery")


@dataclass(frozen=True, slots=True)
class Call:
    """One request's outcome: when it ended (s since start), its RPC, its latency and code."""

    end_s: float
    rpc: str
    ms: float
    code: str
    """"OK", a gRPC status name, or BAD_ANSWER."""


class EventFeed:
    """The users' ratings after the seeded ones, handed out in time order per user.

    A user whose log ran out starts over from the first unseeded rating, so the feed never
    ends and the set of users stays bounded.
    """

    def __init__(self, data: SoakData) -> None:
        self._ratings = {u: e for u, e in data.ratings.items() if len(e) > SEED_EVENTS}
        self._users = sorted(self._ratings)
        self._next = dict.fromkeys(self._users, SEED_EVENTS)
        self._lock = threading.Lock()

    def take(self, rng: random.Random, count: int) -> list[Event]:
        """Up to ``count`` next ratings of one user, stamped now."""
        user = rng.choice(self._users)
        with self._lock:
            start = self._next[user]
            events = self._ratings[user][start:start + count]
            end = start + len(events)
            self._next[user] = end if end < len(self._ratings[user]) else SEED_EVENTS
        now = time.time()
        return [replace(e, timestamp=now) for e in events]


@dataclass
class Stream:
    """One client stream: its RNG, its client and the calls it made."""

    index: int
    client: MmrecClient
    data: SoakData
    feed: EventFeed
    rerank_share: float
    mix: dict[str, float] = field(default_factory=lambda: dict(MIX))
    """Share of each RPC among this stream's requests (the soak's ``MIX`` by default)."""
    rng: random.Random = field(init=False)
    calls: list[Call] = field(default_factory=list)
    revision: int = 0
    events_recorded: int = 0
    items_upserted: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(1000 + self.index)

    def run(self, started: float, deadline: float, stop: threading.Event) -> None:
        """Send requests until the deadline (or ``stop``), recording every one."""
        rpcs, weights = list(self.mix), list(self.mix.values())
        calls: dict[str, Callable[[], bool]] = {
            "Search": self._call_search, "Recommend": self._call_recommend,
            "RecordEvents": self._call_events, "UpsertItems": self._call_upsert}
        while time.monotonic() < deadline and not stop.is_set():
            rpc = self.rng.choices(rpcs, weights)[0]
            begin = time.perf_counter()
            try:
                code = "OK" if calls[rpc]() else "BAD_ANSWER"
            except MmrecError as exc:
                code = exc.status or type(exc).__name__
            except Exception as exc:  # a client-side fault is an error too
                code = f"CLIENT {type(exc).__name__}"
            end = time.perf_counter()
            self.calls.append(Call(end - started, rpc, (end - begin) * 1000, code))

    def _rerank(self) -> bool:
        return self.rerank_share > 0 and self.rng.random() < self.rerank_share

    def _call_search(self) -> bool:
        """A film's title (30 %), a genre phrase or a free query; 30 % of the last two
        with a genre or year filter, 20 % explained. Every one must find something."""
        rng, film = self.rng, self.rng.choice(self.data.films)
        kind = rng.random()
        if kind < 0.3:
            text = film.title
        elif kind < 0.6 and self.data.genres:
            text = f"a {rng.choice(self.data.genres).lower()} film"
        else:
            text = rng.choice(FREE_QUERIES)
        flt = None
        if kind >= 0.3 and rng.random() < 0.3:
            flt = (ItemFilter(must=(MatchAny("genres", (rng.choice(self.data.genres),)),))
                   if rng.random() < 0.5 else ItemFilter(must=(Range("year", gte=1990),)))
        result = self.client.search(text=text, top_k=10, filter=flt,
                                    explain=rng.random() < 0.2, rerank=self._rerank())
        return bool(result.hits)

    def _call_recommend(self) -> bool:
        """A known user (70 %; 15 % of them with context text, 10 % diversified), a new
        visitor (cold start, 15 %) or more-like-these film ids (15 %)."""
        rng, kind = self.rng, self.rng.random()
        if kind < 0.7:
            result = self.client.recommend(
                user_id=rng.choice(self.data.users), top_k=10, rerank=self._rerank(),
                context=rng.choice(FREE_QUERIES) if rng.random() < 0.15 else "",
                diversity=0.3 if rng.random() < 0.1 else None, explain=rng.random() < 0.2)
        elif kind < 0.85:
            result = self.client.recommend(user_id=f"soak-visitor-{rng.randrange(10_000)}",
                                           top_k=10)
        else:
            ids = [f.id for f in rng.sample(self.data.films, 3)]
            result = self.client.recommend(positive_ids=ids, top_k=10)
        return bool(result.hits)

    def _call_events(self) -> bool:
        """The next 1-8 ratings of one user; all must be recorded."""
        events = self.feed.take(self.rng, self.rng.randint(1, 8))
        report = self.client.record_events(events)
        self.events_recorded += report.recorded
        return report.recorded == len(events) and not report.rejected

    def _call_upsert(self) -> bool:
        """1-4 existing films again with a revised text (the catalog does not grow)."""
        self.revision += 1
        films = self.rng.sample(self.data.films, self.rng.randint(1, 4))
        text = f" Revision {self.index}.{self.revision}."
        report = self.client.upsert_items(
            (replace(f, text=f.text.split(" Revision ")[0] + text), None) for f in films)
        self.items_upserted += report.upserted
        return report.upserted == len(films) and not report.rejected


def run_streams(target: str, data: SoakData, *, concurrency: int, seconds: float,
                rerank_share: float, timeout: float,
                tick: Callable[[list[Stream], float], None],
                mix: dict[str, float] | None = None) -> tuple[list[Stream], float]:
    """Run ``concurrency`` streams for ``seconds``, each sending ``mix`` (default ``MIX``);
    ``tick(streams, elapsed)`` is called about once a second from this thread (progress, RSS
    samples). Returns the finished streams and the load's wall time."""
    feed, stop = EventFeed(data), threading.Event()
    streams = [Stream(i, MmrecClient(target, timeout=timeout), data, feed, rerank_share,
                      dict(mix or MIX)) for i in range(concurrency)]
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=s.run, args=(started, deadline, stop),
                                name=f"soak-stream-{s.index}", daemon=True) for s in streams]
    for thread in threads:
        thread.start()
    try:
        second = 1
        while any(t.is_alive() for t in threads):
            time.sleep(max(0.0, started + second - time.perf_counter()))
            tick(streams, time.perf_counter() - started)
            second += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout + 5)
        for stream in streams:
            stream.client.close()
    return streams, time.perf_counter() - started


def all_calls(streams: list[Stream]) -> list[Call]:
    """Every stream's calls, in the order they ended."""
    return sorted((c for s in streams for c in s.calls), key=lambda c: c.end_s)
