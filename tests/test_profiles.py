"""User profiles from events: the decay math, the stored layout, persistence and erasure.

Runs on real embedded stores (an items shard and a users shard) with hand-made
unit vectors, so every expected profile is computed by hand from the formula.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.config import ProfileSettings
from engine.domain import Event, InvalidInput, ItemFilter, ItemRecord, StoredItem
from engine.recommend.profiles import (
    ProfileBook,
    ProfileWeights,
    UserProfile,
    profile_to_record,
    record_to_profile,
)
from engine.store import EdgeStore, EdgeUserStore, VectorSchema

DIM = 4
AXES = {f"i{k}": np.eye(DIM, dtype=np.float32)[k] for k in range(DIM)}
SETTINGS = ProfileSettings(half_life_events=1.0, max_events=3)
"""Half-life of one event: each newer event halves the older ones' share."""


def event(user: str, item: str, kind: str = "view", value: float = 0.0, ts: float = 1.0,
          tenant: str = "default") -> Event:
    return Event(user, item, kind, value, ts, tenant)


class Stores:
    """An items shard holding the four axis items and a users shard, reopenable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open()

    def open(self) -> None:
        self.items = EdgeStore(self.root / "items", VectorSchema({"fused": DIM}))
        self.users = EdgeUserStore(self.root / "users", {"profile": DIM})
        self.book = ProfileBook(self.users, self.items, SETTINGS)

    def close(self) -> None:
        self.users.close()
        self.items.close()


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    s = Stores(tmp_path)
    s.items.upsert([StoredItem(ItemRecord(id=name, title=name), {"fused": vector})
                    for name, vector in AXES.items()])
    yield s
    s.close()


def test_weights_scale_valued_kinds_and_refuse_unknown_kinds() -> None:
    weights = ProfileWeights(ProfileSettings())
    assert weights.weight("purchase", 3.0) == 4.0          # value ignored for plain kinds
    assert weights.weight("rating", 5.0) == pytest.approx(1.0)
    assert weights.weight("rating", 2.0) == pytest.approx(0.4)
    assert weights.weight("dislike", 0.0) < 0
    with pytest.raises(InvalidInput, match=r"unknown event kind 'teleport'.*accepts: "):
        weights.weight("teleport", 0.0)


def test_decay_by_events_and_by_days() -> None:
    by_events = ProfileWeights(ProfileSettings(half_life_events=2.0))
    assert by_events.decay(0.0, 10.0) == pytest.approx(0.5 ** 0.5)
    by_days = ProfileWeights(ProfileSettings(half_life_events=1e9, half_life_days=1.0))
    assert by_days.decay(0.0, 86_400.0) == pytest.approx(1.0)   # no earlier event: no time decay
    assert by_days.decay(86_400.0, 3 * 86_400.0) == pytest.approx(0.25, rel=1e-6)


def test_profile_vector_is_the_decayed_weighted_sum(stores: Stores) -> None:
    outcome = stores.book.record([event("u", "i0", "view", ts=1),
                                  event("u", "i1", "purchase", ts=2),
                                  event("u", "i2", "dislike", ts=3)])
    assert (outcome.recorded, outcome.rejected, outcome.users_updated) == (3, [], 1)
    profile = stores.book.get("u", tenant="default")
    assert profile is not None
    # Half-life one event: S = 0.25 * 1 * e0 + 0.5 * 4 * e1 + 1 * (-2) * e2
    expected = 0.25 * AXES["i0"] + 2.0 * AXES["i1"] - 2.0 * AXES["i2"]
    np.testing.assert_allclose(profile.vector, expected, atol=1e-5)
    assert profile.seen == ("i0", "i1", "i2")
    weights = stores.book.weights
    assert profile.positives(weights) == ["i0", "i1"] and profile.negatives(weights) == ["i2"]


def test_incremental_updates_equal_one_batch(stores: Stores, tmp_path: Path) -> None:
    events = [event("a", f"i{k % DIM}", "click", ts=k) for k in range(7)]
    stores.book.record(events)
    for e in events:
        stores.book.record([Event("b", e.item_id, e.kind, e.value, e.timestamp)])
    a, b = (stores.book.get(u, tenant="default") for u in ("a", "b"))
    assert a is not None and b is not None
    np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)
    assert len(a.events) == SETTINGS.max_events and a.event_count == 7   # capped list, full count


def test_bad_events_are_refused_and_good_ones_kept(stores: Stores) -> None:
    outcome = stores.book.record([event("u", "i0"), event("", "i1"), event("u", "nope"),
                                  event("u", "i1", "teleport"), event("u", "i2", ts=float("nan")),
                                  event("u", "i3")])
    assert outcome.recorded == 2
    assert [index for index, _ in outcome.rejected] == [1, 2, 3, 4]
    reasons = dict(outcome.rejected)
    assert "user_id must not be empty" in reasons[1]
    assert "unknown item 'nope'" in reasons[2]
    assert "unknown event kind" in reasons[3]
    assert "timestamp" in reasons[4]
    profile = stores.book.get("u", tenant="default")
    assert profile is not None and profile.seen == ("i0", "i3")


def test_events_without_time_get_the_receive_time(stores: Stores) -> None:
    stores.book.record([event("u", "i0", ts=0.0)], now=1234.5)
    profile = stores.book.get("u", tenant="default")
    assert profile is not None and profile.events[0].timestamp == 1234.5


def test_popularity_grows_with_positive_events_only(stores: Stores) -> None:
    stores.book.record([event("u", "i0", "purchase"), event("v", "i0"), event("u", "i1"),
                        event("u", "i2", "dislike")])
    popular = stores.items.popular(tenant="default", filter=ItemFilter(), limit=10)
    assert [(h.record.id, h.score) for h in popular] == [("i0", 5.0), ("i1", 1.0)]


def test_profiles_survive_a_restart(stores: Stores) -> None:
    stores.book.record([event("u", "i0", ts=1), event("u", "i1", "like", ts=2)])
    before = stores.book.get("u", tenant="default")
    stores.close()
    stores.open()
    after = stores.book.get("u", tenant="default")
    assert before is not None and after is not None
    np.testing.assert_allclose(after.vector, before.vector, atol=1e-5)
    assert after.events == before.events and after.seen == before.seen
    stores.book.record([event("u", "i2", ts=3)])          # and keeps accumulating
    again = stores.book.get("u", tenant="default")
    assert again is not None and again.event_count == 3


def test_tenants_keep_separate_profiles(stores: Stores) -> None:
    stores.items.upsert([StoredItem(ItemRecord(id="i0", tenant="shop"), {"fused": AXES["i3"]})])
    stores.book.record([event("u", "i0", tenant="shop"), event("u", "i1")])
    shop, default = (stores.book.get("u", tenant=t) for t in ("shop", "default"))
    assert shop is not None and default is not None
    np.testing.assert_allclose(shop.vector, AXES["i3"], atol=1e-6)
    np.testing.assert_allclose(default.vector, AXES["i1"], atol=1e-6)


def test_delete_user_erases_everything(stores: Stores) -> None:
    stores.book.record([event("u", "i0"), event("u", "i1"), event("u", "i1"), event("w", "i2")])
    assert stores.book.get("u", tenant="default") is not None        # now cached too
    erased = stores.book.delete("u", tenant="default")
    assert (erased.events, erased.seen, erased.profile, erased.cache_entries) == (3, 2, True, 1)
    assert stores.book.get("u", tenant="default") is None
    assert stores.users.get("u", tenant="default") is None
    assert [r.user_id for r in stores.users.users()] == ["w"]
    assert [u for u, _ in stores.book.histories()] == ["w"]
    stores.close()                                                     # nothing comes back
    stores.open()
    assert stores.book.get("u", tenant="default") is None
    again = stores.book.delete("u", tenant="default")
    assert (again.events, again.seen, again.profile, again.cache_entries) == (0, 0, False, 0)


def test_delete_user_leaves_no_trace_in_the_users_files(stores: Stores) -> None:
    stores.book.record([event("erase-me-7f3q", "i0"), event("erase-me-7f3q", "i1", "like"),
                        event("stay-9k2w", "i2")])
    stores.book.record([event("erase-me-7f3q", "i3", ts=2)])   # a second version of the user

    stores.book.delete("erase-me-7f3q", tenant="default")

    files = [p for p in (stores.root / "users").rglob("*") if p.is_file()]
    assert not [p for p in files if b"erase-me-7f3q" in p.read_bytes()]
    assert [p for p in files if b"stay-9k2w" in p.read_bytes()]
    stores.close()
    stores.open()
    assert stores.book.get("erase-me-7f3q", tenant="default") is None
    kept = stores.book.get("stay-9k2w", tenant="default")
    assert kept is not None and kept.seen == ("i2",)

def test_record_layout_round_trips() -> None:
    profile = UserProfile(tenant="t", user_id="u", events=(Event("u", "x", "view", 0.0, 5.0, "t"),),
                          seen=("x",), vector=np.array([3.0, 4.0, 0.0, 0.0], np.float32),
                          event_count=9, last_timestamp=5.0)
    record = profile_to_record(profile)
    np.testing.assert_allclose(record.vectors["profile"], [0.6, 0.8, 0, 0])
    back = record_to_profile(record)
    np.testing.assert_allclose(back.vector, profile.vector, atol=1e-6)
    assert (back.events, back.seen, back.event_count) == (profile.events, profile.seen, 9)
    empty = record_to_profile(profile_to_record(UserProfile(tenant="t", user_id="v")))
    assert empty.vector is None and empty.events == ()


def test_interleaved_users_in_one_batch_equal_one_event_at_a_time(stores: Stores) -> None:
    """A batch mixing users is written with one read and one write, with the same result."""
    mixed = [event(f"u{k % 3}", f"i{k % DIM}", "click", ts=k) for k in range(12)]
    stores.book.record(mixed)
    for e in mixed:
        stores.book.record([Event(f"solo-{e.user_id}", e.item_id, e.kind, e.value, e.timestamp)])
    for k in range(3):
        batch, single = (stores.book.get(name, tenant="default") for name in (f"u{k}",
                                                                               f"solo-u{k}"))
        assert batch is not None and single is not None
        np.testing.assert_allclose(batch.vector, single.vector, atol=1e-5)
        assert [e.item_id for e in batch.events] == [e.item_id for e in single.events]
        assert batch.event_count == single.event_count == 4


def test_profiles_stored_in_the_first_layout_still_read() -> None:
    from engine.store import UserRecord

    record = UserRecord(tenant="t", user_id="u", vectors={},
                        payload={"events": [["x", "view", 0.0, 5.0], ["y", "like", 0.0, 6.0]],
                                 "seen": ["x", "y"], "norm": 0.0, "event_count": 2})
    profile = record_to_profile(record)
    assert [(e.item_id, e.kind, e.timestamp) for e in profile.events] == [
        ("x", "view", 5.0), ("y", "like", 6.0)]
