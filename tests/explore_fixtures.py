"""A live service and a live explorer for the explorer's tests: real gRPC, real HTTP.

The service is the real grpc.aio server on loopback (``tests.conftest.ServerThread``) over
tiny random models and a real qdrant-edge shard, holding real MovieLens-100k rows (title,
year, genres, as ``mmrec demo`` builds them) and a few picture items whose PNG files lie in
an image folder, so thumbnails are served from disk. The explorer is ``engine.explore``'s
HTTP server on another loopback port, talking to the service through the Python client.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.client import MmrecClient
from engine.domain import Event, ItemRecord
from engine.explore import ExplorerServer, ImageRoots, ServiceTarget, make_explorer
from engine.runtime.engine import Engine
from indexers.catalog import row_to_record
from indexers.datasets import movielens_items
from tests.conftest import ServerThread, make_config, png_bytes
from tests.test_readme import FILMS
from tests.tiny_llm import make_tiny_llm
from tests.tiny_models import make_tiny_clip_settings

PICTURES = [("stamp-cat", "a cute cat", "animals"), ("stamp-dog", "a happy dog", "animals"),
            ("stamp-truck", "a red fire truck", "vehicles"),
            ("stamp-guitar", "a classical guitar", "music")]
"""Picture items (id, caption, category), each with a PNG in the image folder."""


@dataclass
class LiveExplorer:
    """The running service, the explorer in front of it, and the image folder it serves."""

    service: ServerThread
    explorer: ExplorerServer
    images: Path

    @property
    def url(self) -> str:
        return self.explorer.url


def catalog(folder: Path, images: Path) -> list[tuple[ItemRecord, bytes | None]]:
    """The films (no image) and the pictures (PNG bytes, written under ``images``)."""
    (folder / "ml-100k.item").write_text(FILMS, encoding="utf-8")
    items: list[tuple[ItemRecord, bytes | None]] = [
        (row_to_record(row), None) for row in movielens_items(folder)]
    images.mkdir(parents=True, exist_ok=True)
    for seed, (item_id, caption, category) in enumerate(PICTURES):
        data = png_bytes(seed, size=48)
        path = images / category / f"{item_id}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        items.append((ItemRecord(id=item_id, title=caption, image_uri=str(path),
                                 attributes={"category": category}), data))
    return items


def start_service(folder: Path, text_dir: Path, *, clip: bool = True, llm: bool = False
                  ) -> tuple[Engine, ServerThread]:
    """An engine on tiny models (a tiny seeded LLM too when ``llm``) and the real gRPC server
    in front of it, seeded with the catalog."""
    settings = make_tiny_clip_settings() if clip else None
    llm_dir = make_tiny_llm(folder / "tiny-llm") if llm else None
    config = make_config(folder / "store", text_dir, settings, llm_dir=llm_dir)
    engine = Engine.from_config(config)
    server = ServerThread(engine, config)
    with MmrecClient(server.target) as client:
        report = client.upsert_items(catalog(folder, folder / "images"))
        assert report.upserted == 14 + len(PICTURES) and not report.rejected
        # Another visitor's events give the catalog popular items (a new user's cold start).
        client.record_events(Event("seed-visitor", item, "view", 0.0, 1.0e9 + n)
                             for n, item in enumerate(["ml-50", "ml-1", "stamp-cat", "ml-183"]))
    return engine, server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_text_dir: Path) -> Iterator[LiveExplorer]:
    """The service and the explorer, once per test module."""
    folder = tmp_path_factory.mktemp("explore")
    engine, service = start_service(folder, tiny_text_dir, llm=True)
    explorer = make_explorer(ServiceTarget(service.target), images=ImageRoots([folder / "images"]))
    explorer.start()
    try:
        yield LiveExplorer(service, explorer, folder / "images")
    finally:
        explorer.stop()
        service.stop()
        engine.close()


def call(url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One HTTP request to the explorer: status, JSON answer, headers (errors included)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={
        **({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, got = exc.read(), exc.code, dict(exc.headers)
    kind = got.get("Content-Type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else {}, got
