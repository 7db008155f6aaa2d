"""Fetching image bytes: local paths and file:// URIs, and HTTP against a real loopback server."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.domain import InvalidInput, NotFound, Unavailable
from indexers import fetch
from indexers.fetch import FetchOptions, fetch_image_bytes
from tests.conftest import png_bytes

PNG = png_bytes(5)
HTTP = FetchOptions(allow_http=True, timeout=2.0, retries=2, backoff=0.01)


class ImageServer(ThreadingHTTPServer):
    """A loopback server whose paths each misbehave in one way; it counts requests per path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ImageHandler)
        self.hits: Counter[str] = Counter()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class ImageHandler(BaseHTTPRequestHandler):
    server: ImageServer

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        hits = self.server.hits[self.path]
        try:
            if self.path == "/ok.png":
                self._send(200, PNG)
            elif self.path == "/flaky.png":
                self._send(500, b"busy") if hits == 1 else self._send(200, PNG)
            elif self.path == "/down.png":
                self._send(503, b"down")
            elif self.path == "/slow.png":
                time.sleep(1.0)
                self._send(200, PNG)
            elif self.path == "/big.png":  # announces a huge body it never sends
                self._send(200, b"x" * 10, length=10**9)
            elif self.path == "/stream.png":  # no Content-Length: the size shows while reading
                self._send(200, b"x" * 5000, length=None)
            elif self.path == "/moved.png":
                self.send_response(302)
                self.send_header("Location", "/ok.png")
                self.end_headers()
            else:
                self._send(404, b"no such image")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def _send(self, code: int, body: bytes, length: int | None = -1) -> None:
        self.send_response(code)
        if length is not None:
            self.send_header("Content-Length", str(len(body) if length == -1 else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests assert on hit counts, not on the log."""


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    srv = ImageServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_local_paths_and_file_uris(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a b.png").write_bytes(PNG)
    options = FetchOptions()
    assert fetch_image_bytes("img/a b.png", tmp_path, options) == PNG
    assert fetch_image_bytes(str(tmp_path / "img" / "a b.png"), None, options) == PNG
    assert fetch_image_bytes(f"file://{tmp_path}/img/a%20b.png", tmp_path, options) == PNG
    with pytest.raises(InvalidInput, match="outside the catalog folder"):
        fetch_image_bytes(f"file://{tmp_path}/img/a%20b.png", Path("/elsewhere"), options)
    outside = FetchOptions(allow_outside_paths=True)
    assert fetch_image_bytes(f"file://{tmp_path}/img/a%20b.png", Path("/elsewhere"),
                             outside) == PNG


def test_local_failures(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    with pytest.raises(NotFound, match=r"image file .*missing\.png does not exist"):
        fetch_image_bytes("missing.png", tmp_path, FetchOptions())
    with pytest.raises(NotFound, match="does not exist"):
        fetch_image_bytes("a.png/inside.png", tmp_path, FetchOptions())
    small = FetchOptions(max_bytes=100)
    with pytest.raises(InvalidInput, match=rf"is {len(PNG):,} bytes, above the limit of 100"):
        fetch_image_bytes("a.png", tmp_path, small)
    with pytest.raises(InvalidInput, match="is a folder"):
        fetch_image_bytes(".", tmp_path, FetchOptions())
    with pytest.raises(InvalidInput, match="empty"):
        fetch_image_bytes(" ", tmp_path, FetchOptions())
    with pytest.raises(InvalidInput, match=r"scheme 'ftp'.*http\(s\)://"):
        fetch_image_bytes("ftp://host/a.png", tmp_path, FetchOptions())


def test_http_is_off_unless_allowed(server: ImageServer) -> None:
    with pytest.raises(InvalidInput, match=r"HTTP fetching is off.*--allow-http"):
        fetch_image_bytes(f"{server.url}/ok.png", None, FetchOptions())
    assert server.hits["/ok.png"] == 0
    assert fetch_image_bytes(f"{server.url}/ok.png", None, HTTP) == PNG
    assert fetch_image_bytes(f"{server.url}/moved.png", None, HTTP) == PNG


def test_http_retries_a_server_error_then_succeeds(server: ImageServer) -> None:
    assert fetch_image_bytes(f"{server.url}/flaky.png", None, HTTP) == PNG
    assert server.hits["/flaky.png"] == 2


def test_http_gives_up_with_the_status(server: ImageServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(fetch, "sleep", delays.append)
    options = FetchOptions(allow_http=True, timeout=2.0)
    with pytest.raises(InvalidInput, match="answered HTTP 503 Service Unavailable after 3 att"):
        fetch_image_bytes(f"{server.url}/down.png", None, options)
    assert server.hits["/down.png"] == 3
    assert delays == [0.5, 1.0]


def test_http_client_errors_are_not_retried(server: ImageServer) -> None:
    with pytest.raises(InvalidInput, match="answered HTTP 404"):
        fetch_image_bytes(f"{server.url}/nothing.png", None, HTTP)
    assert server.hits["/nothing.png"] == 1


def test_http_timeout_is_retried_then_unavailable(server: ImageServer) -> None:
    options = FetchOptions(allow_http=True, timeout=0.2, retries=1, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"timed out after 0.2 s after 2 attempts"):
        fetch_image_bytes(f"{server.url}/slow.png", None, options)
    assert time.monotonic() - started < 0.9  # never waited for the 1 s answer
    assert server.hits["/slow.png"] == 2


def test_http_oversize_is_refused(server: ImageServer) -> None:
    options = FetchOptions(allow_http=True, timeout=2.0, max_bytes=1000)
    with pytest.raises(InvalidInput, match="1,000,000,000 bytes, above the limit of 1,000"):
        fetch_image_bytes(f"{server.url}/big.png", None, options)
    with pytest.raises(InvalidInput, match="more than 1,000 bytes, above the limit"):
        fetch_image_bytes(f"{server.url}/stream.png", None, options)
    assert server.hits["/big.png"] == server.hits["/stream.png"] == 1


def test_http_unreachable_host_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = FetchOptions(allow_http=True, timeout=1.0, retries=1, backoff=0.01)
    with pytest.raises(Unavailable, match=r"could not be fetched.*after 2 attempts"):
        fetch_image_bytes(f"http://127.0.0.1:{port}/a.png", None, options)
