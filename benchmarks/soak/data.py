"""The soak's data: MovieLens-100k films and ratings, as `make data` unpacks them.

The catalog is the films (title, year, genres; no images, CLIP is off); the users are
MovieLens users whose ratings, replayed in time order, are the live events. Setup indexes
the films through UpsertItems and records the first ratings of some users through
RecordEvents, against the server under test, so the soak's store is built by the service
itself and nothing else holds the data dir.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from engine.client import MmrecClient
from engine.domain import Event, ItemRecord
from indexers.catalog import row_to_record
from indexers.datasets import DATASETS, movielens_dir, movielens_events, movielens_items

SEED_EVENTS = 20
"""Ratings per seeded user recorded before the load starts (the rest arrive during it)."""
BATCH = 256
"""Items per UpsertItems stream while indexing."""


@dataclass
class SoakData:
    """Films, and each user's ratings in time order."""

    films: list[ItemRecord]
    ratings: dict[str, list[Event]]
    genres: list[str] = field(default_factory=list)

    @property
    def users(self) -> list[str]:
        """The users, in a fixed order."""
        return sorted(self.ratings)

    def describe(self) -> str:
        """The data in words, for a result's provenance."""
        return (f"MovieLens-100k: {len(self.films):,} films, {len(self.ratings):,} users "
                f"(their first {SEED_EVENTS} ratings recorded at setup, the rest replayed "
                "as live events)")


def load_data(datasets: Path = DATASETS, *, items: int = 0, users: int = 0) -> SoakData:
    """The first ``items`` films (0: all 1,682) and the ratings of the first ``users``
    users (0: all 943) that name those films; raises FileNotFoundError without the data."""
    folder = movielens_dir(datasets)
    if not (folder / "ml-100k.item").is_file():
        raise FileNotFoundError(f"MovieLens-100k is missing under {folder}: run `make data`")
    films = [row_to_record(row) for row in movielens_items(folder)]
    films = films[:items] if items else films
    known = {film.id for film in films}
    ratings: dict[str, list[Event]] = defaultdict(list)
    for row in movielens_events(folder):
        if row["item_id"] in known:
            ratings[row["user_id"]].append(Event(row["user_id"], row["item_id"], row["kind"],
                                                 row["value"], row["timestamp"]))
    chosen = sorted(ratings, key=lambda u: int(u.rsplit("-", 1)[1]))
    chosen = chosen[:users] if users else chosen
    genres = sorted({g for film in films for g in film.attributes.get("genres", [])})
    return SoakData(films, {u: sorted(ratings[u], key=lambda e: e.timestamp) for u in chosen},
                    genres)


@dataclass(frozen=True)
class SetupTimes:
    """Seconds each setup step took, and what it stored."""

    ready_s: float
    index_s: float
    events_s: float
    items: int
    events: int


def index_and_seed(client: MmrecClient, data: SoakData, ready_s: float) -> SetupTimes:
    """Index every film over UpsertItems and record each user's first ratings."""
    started = time.perf_counter()
    upserted = 0
    for start in range(0, len(data.films), BATCH):
        report = client.upsert_items((film, None) for film in data.films[start:start + BATCH])
        if report.rejected:
            raise RuntimeError(f"the server rejected films while indexing: {report.rejected[:3]}")
        upserted += report.upserted
    index_s = time.perf_counter() - started
    started = time.perf_counter()
    seeded = [e for events in data.ratings.values() for e in events[:SEED_EVENTS]]
    recorded = client.record_events(seeded).recorded
    return SetupTimes(ready_s, index_s, time.perf_counter() - started, upserted, recorded)
