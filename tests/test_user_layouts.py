"""The users store's on-disk layouts: the packed payload, base64 journal vectors, and the
layouts written before them (still read, so an upgrade loses no profile)."""

from __future__ import annotations

import json

import numpy as np

from engine.store.edge.journal import entry_vectors, put_entry
from engine.store.schema import VectorSchema
from engine.store.users import PACKED, UserRecord, prepare_user, stored_user

PAYLOAD = {"items": ["a", "b"], "kinds": ["view", "purchase"], "values": [0.0, 2.5],
           "times": [1.7e9, 1.7e9 + 1], "seen": ["a", "b"], "nested": {"x": [1, None]}}


def test_payload_is_packed_into_one_string_and_unpacked_on_reading() -> None:
    schema = VectorSchema(dense={"profile": 3})
    record = UserRecord("shop", "u1", {"profile": np.array([1, 0, 0], np.float32)}, PAYLOAD)
    prepared = prepare_user(schema, record)
    assert set(prepared.payload) == {PACKED, "tenant", "user_id"}
    assert json.loads(prepared.payload[PACKED]) == PAYLOAD
    back = stored_user(prepared.payload, prepared.vectors)
    assert back is not None and back.payload == PAYLOAD
    assert (back.tenant, back.user_id) == ("shop", "u1")


def test_points_written_with_plain_payload_keys_are_still_read() -> None:
    legacy = {**PAYLOAD, "tenant": "shop", "user_id": "u1"}
    back = stored_user(legacy, {"profile": [1.0, 0.0, 0.0]})
    assert back is not None and back.payload == PAYLOAD


def test_journal_vectors_round_trip_exactly_in_both_formats() -> None:
    values = np.random.default_rng(0).standard_normal(33).astype(np.float32)
    entry = json.loads(json.dumps(put_entry("p1", {"profile": values.tolist()}, {"k": 1})))
    assert "vectors" not in entry
    assert np.array_equal(np.array(entry_vectors(entry)["profile"], np.float32), values)
    legacy = json.loads(json.dumps({"op": "put", "id": "p1", "payload": {},
                                    "vectors": {"profile": values.tolist()}}))
    assert np.array_equal(np.array(entry_vectors(legacy)["profile"], np.float32), values)
