"""The explorer's HTTP layer against a live service: JSON answers, readable errors, the
thumbnail rules (image roots, traversal, symlinks, non-images), host and origin checks, API
keys forwarded to a service with auth on, and `mmrec explore` started as a command.

The page itself is driven in a real browser by tests/test_explore_browser.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import AuthSettings
from engine.explore import ImageRoots, ServiceTarget, make_explorer
from engine.explore.images import sniff
from engine.runtime.engine import Engine
from engine.service.keys import KeyFile, Role
from tests.conftest import ServerThread, make_config, png_bytes
from tests.explore_fixtures import LiveExplorer, call, live
from tests.tiny_models import make_tiny_clip_settings

__all__ = ["live"]  # the module-scoped fixture, used by name


def test_info_says_what_the_page_may_offer(live: LiveExplorer) -> None:
    status, info, headers = call(live.url + "api/info")
    assert status == 200, info
    assert info["item_count"] == 18 and info["image_search"]["on"] is True
    assert {m["role"] for m in info["models"]} >= {"clip", "text"}
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_search_is_explained_and_timed(live: LiveExplorer) -> None:
    status, result, _ = call(live.url + "api/search", {"text": "star trek", "top_k": 5})
    assert status == 200, result
    assert 0 < len(result["hits"]) <= 5
    first = result["hits"][0]
    assert {"encode", "retrieve", "explain"} <= set(result["stage_ms"])
    assert first["explanation"]["channels"] and first["thumb"].startswith("/api/thumb?")
    assert result["round_trip_ms"] > 0
    status, facets, _ = call(live.url + "api/facets")
    assert "genres" in facets["chips"] and "year" in facets["ranges"]


def test_filters_reach_the_service(live: LiveExplorer) -> None:
    body = {"text": "star", "top_k": 10, "filter": {"any": {"genres": ["Horror"]},
                                                     "ranges": {"year": {"gte": 1970}}}}
    status, result, _ = call(live.url + "api/search", body)
    assert status == 200, result
    assert [h["id"] for h in result["hits"]] == ["ml-183"]  # Alien: the one horror film


def test_service_errors_are_readable_json(live: LiveExplorer) -> None:
    status, answer, _ = call(live.url + "api/search", {"text": "x" * 500})
    assert status == 400 and answer["error"]["status"] == "INVALID_ARGUMENT"
    assert "Traceback" not in answer["error"]["message"] and answer["error"]["message"]
    status, answer, _ = call(live.url + "api/search", {"text": "cat", "top_k": "many"})
    assert status == 400 and "top_k" in answer["error"]["message"]
    status, answer, _ = call(live.url + "api/nothing")
    assert status == 404 and answer["error"]["status"] == "NOT_FOUND"


def test_an_unreachable_service_is_unavailable(live: LiveExplorer) -> None:
    explorer = make_explorer(ServiceTarget("127.0.0.1:1", timeout=5))
    explorer.start()
    try:
        status, answer, _ = call(explorer.url + "api/info")
    finally:
        explorer.stop()
    assert status == 503 and answer["error"]["status"] == "UNAVAILABLE"


def test_writes_from_another_origin_or_host_are_refused(live: LiveExplorer) -> None:
    body = {"user_id": "u", "item_id": "ml-1", "kind": "like"}
    status, answer, _ = call(live.url + "api/events", body,
                             headers={"Origin": "http://evil.example"})
    assert status == 403 and answer["error"]["status"] == "FORBIDDEN_ORIGIN"
    status, answer, _ = call(live.url + "api/info", headers={"Host": "evil.example:80"})
    assert status == 421 and answer["error"]["status"] == "FORBIDDEN_HOST"


def test_thumbnails_come_from_the_image_folder_only(live: LiveExplorer) -> None:
    call(live.url + "api/search", {"text": "cat", "top_k": 18})  # the explorer sees every item
    status, _, headers = call(live.url + "api/thumb?id=stamp-cat")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert "X-Mmrec-Placeholder" not in headers
    status, _, headers = call(live.url + "api/thumb?id=ml-1")  # a film has no image
    assert headers["Content-Type"] == "image/svg+xml" and headers["X-Mmrec-Placeholder"]
    status, _, headers = call(live.url + "api/thumb?id=no-such-item")
    assert headers["Content-Type"] == "image/svg+xml" and "NOT_FOUND" in headers[
        "X-Mmrec-Placeholder"]


def test_image_roots_refuse_escapes_links_and_non_images(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "ok.png").write_bytes(png_bytes(1))
    (outside / "secret.png").write_bytes(png_bytes(2))
    (root / "fake.png").write_bytes(b"not an image at all")
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "inner.png").symlink_to(root / "sub" / "ok.png")
    os.mkfifo(root / "pipe.png")
    roots = ImageRoots([root, tmp_path / "missing"])
    assert roots.missing == [tmp_path / "missing"]
    assert roots.thumbnail(str(root / "sub" / "ok.png"), "t").content_type == "image/png"
    assert roots.thumbnail("sub/ok.png", "t").content_type == "image/png"  # relative to a root
    assert roots.thumbnail(str(root / "inner.png"), "t").content_type == "image/png"
    refused = {
        "traversal": str(root / "sub" / ".." / ".." / "outside" / "secret.png"),
        "relative traversal": "../outside/secret.png",
        "symlink out": str(root / "link.png"),
        "outside": str(outside / "secret.png"),
        "not an image": str(root / "fake.png"),
        "fifo": str(root / "pipe.png"),
        "folder": str(root / "sub"),
        "remote": "https://example.com/cat.png",
        "file url out": (outside / "secret.png").as_uri(),
        "nul": str(root / "sub" / "ok.png\x00"),
        "missing": str(root / "gone.png"),
        "none": "",
    }
    for case, uri in refused.items():
        thumb = roots.thumbnail(uri, "Secret")
        assert thumb.content_type == "image/svg+xml" and thumb.placeholder_reason, case
        assert b"<text" in thumb.body and b">S<" in thumb.body, case
    assert ImageRoots([]).thumbnail(str(root / "sub" / "ok.png"), "t").placeholder_reason
    assert sniff(png_bytes(3)) == "image/png" and sniff(b"RIFF0000WEBPVP8 ") == "image/webp"


@pytest.fixture
def auth_service(tmp_path: Path, tiny_text_dir: Path) -> Iterator[tuple[ServerThread, KeyFile]]:
    """The service with auth on (a real key file), nothing indexed."""
    config = make_config(tmp_path / "store", tiny_text_dir, make_tiny_clip_settings())
    config = config.model_copy(update={"auth": AuthSettings(enabled=True)})
    engine = Engine.from_config(config)
    server = ServerThread(engine, config)
    yield server, KeyFile(config.key_path())
    server.stop()
    engine.close()


def test_api_keys_are_forwarded(auth_service: tuple[ServerThread, KeyFile]) -> None:
    server, keys = auth_service
    _, token = keys.create(["default"], Role.READ)
    bare = make_explorer(ServiceTarget(server.target))
    keyed = make_explorer(ServiceTarget(server.target, api_key=token))
    for explorer in (bare, keyed):
        explorer.start()
    try:
        status, answer, _ = call(bare.url + "api/info")
        assert status == 401 and answer["error"]["status"] == "UNAUTHENTICATED"
        assert call(keyed.url + "api/info")[0] == 200  # the explorer's own key
        status, _, _ = call(bare.url + "api/info", headers={"Authorization": f"Bearer {token}"})
        assert status == 200  # the page's key
        status, answer, _ = call(keyed.url + "api/events",
                                 {"user_id": "u", "item_id": "x", "kind": "like"})
        assert status == 403 and answer["error"]["status"] == "PERMISSION_DENIED"
    finally:
        bare.stop()
        keyed.stop()


def test_mmrec_explore_serves_the_page(live: LiveExplorer) -> None:
    """The real command: it prints its URL, serves the page and the API, stops on SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "explore", "--port", "0", "--service",
         live.service.target, "--images-root", str(live.images)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"})
    try:
        assert process.stdout is not None
        deadline, url = time.monotonic() + 120, None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "mmrec explore exited before printing its URL"
            found = re.search(r"open (http://\S+/)", line)
            url = found.group(1) if found else None
        assert url, "no URL printed"
        status, info, _ = call(url + "api/info")
        assert status == 200 and info["service"] == live.service.target
        status, _, headers = call(url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
