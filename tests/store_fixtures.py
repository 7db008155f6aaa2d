"""Shared pieces of the VectorStore contract suites (test_store_contract.py,
test_store_hybrid_contract.py and test_store_recommend_contract.py): the backends,
the base schema, item builders, and the helpers that make an EdgeStore index
build span writes.

Vectors are built in a plane (``at(degrees)``) so the cosine order, and the
scores, are known in advance. Each suite declares its own ``backend`` fixture
as ``@pytest.fixture(params=BACKENDS)`` over :func:`open_backend`, so that
fixture lives here once without being imported as a pytest fixture.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from engine.domain import ItemRecord, StoredItem
from engine.store import EdgeStore, ServerStore, VectorSchema, VectorStore
from engine.store.edge import rebuild as edge_rebuild

QDRANT_WARNINGS = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
    # qdrant-client checks the server version on a thread; with no server it warns later.
    pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning"),
]
"""The suites' ``pytestmark``: warnings of local-mode and unreachable Qdrant."""

SCHEMA = VectorSchema({"fused": 8, "clip": 4, "text": 6})
TENANT = "shop"
BACKENDS = ["edge", "server", "server-url"]
"""Backend kinds, the ``backend`` fixture's params."""


def at(degrees: float, dim: int = 8) -> np.ndarray:
    """A unit vector in the plane of the first two axes; cosine to ``at(0)`` is cos(degrees)."""
    vector = np.zeros(dim, dtype=np.float32)
    vector[0], vector[1] = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return vector


def item(
    item_id: str,
    fused: float | None = 0.0,
    *,
    clip: float | None = None,
    text: float | None = None,
    tenant: str = TENANT,
    title: str = "",
    attributes: Mapping[str, Any] | None = None,
) -> StoredItem:
    """An item whose channels point at the given angles; ``None`` leaves a channel out."""
    vectors = {
        name: at(angle, SCHEMA.dense[name])
        for name, angle in (("fused", fused), ("clip", clip), ("text", text))
        if angle is not None
    }
    record = ItemRecord(
        id=item_id, tenant=tenant, title=title or f"title of {item_id}",
        attributes=dict(attributes or {}),
    )
    return StoredItem(record=record, vectors=vectors)


def ids(hits: list[Any]) -> list[str]:
    """Item ids of search hits or records, in order."""
    return [getattr(hit, "record", hit).id for hit in hits]


@dataclass
class Backend:
    """Opens stores of one kind on the same underlying data, so tests can reopen."""

    kind: str
    factory: Callable[[VectorSchema], VectorStore]
    opened: list[VectorStore] = field(default_factory=list)

    def open(self, schema: VectorSchema = SCHEMA) -> VectorStore:
        """A store on this backend's data (closed at teardown if the test does not)."""
        store = self.factory(schema)
        self.opened.append(store)
        return store


def open_backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    """The ``backend`` fixture's body: one backend, its stores closed after the test.

    ``server-url`` skips the test unless QDRANT_URL names a server.
    """
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if kind == "edge":
        backend = Backend(kind, lambda schema: EdgeStore(tmp_path / "data", schema))
    elif kind == "server":
        client = QdrantClient(":memory:")
        backend = Backend(kind, lambda schema: ServerStore(client, schema, collection="contract"))
        cleanup = client.close
    else:
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip("QDRANT_URL is not set")
        collection = f"mmrec_contract_{uuid.uuid4().hex[:10]}"
        backend = Backend(kind, lambda schema: ServerStore(url, schema, collection=collection))

        def cleanup() -> None:
            admin = QdrantClient(url=url, prefer_grpc=True)
            admin.delete_collection(collection)
            admin.close()

    yield backend
    for store in backend.opened:
        store.close()
    cleanup()


def slow_child(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    """Make the optimizing child start ``delay`` seconds late, so a build surely spans writes."""
    real = edge_rebuild.child_command
    wrapper = (
        f"import subprocess, sys, time; time.sleep({delay}); "
        "sys.exit(subprocess.call(sys.argv[1:]))"
    )

    def command(shard_dir: Path) -> list[str]:
        return [sys.executable, "-c", wrapper, *real(shard_dir)]

    monkeypatch.setattr(edge_rebuild, "child_command", command)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until ``condition`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)
