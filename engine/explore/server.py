"""The explorer's HTTP server: the bundled page, its JSON API, and thumbnails.

The standard library's threading HTTP server is enough for a page one person drives: the
work happens in the service, and each request is one or two gRPC calls. What the server adds
is the care a web server on a developer's machine needs:

- errors become JSON ``{"error": {"status", "message"}}`` with the service's gRPC status name
  and message (an HTTP status that matches it); an unexpected fault is logged here and the
  page gets one line saying so, never a traceback;
- requests name this server in ``Host`` (when it listens on loopback: a loopback name), so a
  web page elsewhere cannot reach it through DNS rebinding, and writes are JSON POSTs whose
  ``Origin``, when sent, is this server (a cross-site form cannot record or erase anything);
- every answer carries a Content-Security-Policy that allows scripts, styles and images from
  this server only, ``nosniff`` and no referrer; bodies are capped.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from engine.domain import (
    FailedPrecondition,
    InvalidInput,
    MmrecError,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from engine.explore.api import ExplorerApi

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 24 * 1024 * 1024
"""The largest request body read (a base64 query image and the knobs)."""
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
HTTP_OF: tuple[tuple[type[MmrecError], HTTPStatus], ...] = (
    (InvalidInput, HTTPStatus.BAD_REQUEST), (NotFound, HTTPStatus.NOT_FOUND),
    (FailedPrecondition, HTTPStatus.CONFLICT), (Unauthenticated, HTTPStatus.UNAUTHORIZED),
    (PermissionDenied, HTTPStatus.FORBIDDEN), (Overloaded, HTTPStatus.TOO_MANY_REQUESTS),
    (Unavailable, HTTPStatus.SERVICE_UNAVAILABLE),
)


def static_files() -> dict[str, tuple[bytes, str]]:
    """The bundled assets by URL path, read once: only these names are ever served."""
    folder = resources.files("engine.explore") / "static"
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        kind = STATIC_TYPES.get("." + entry.name.rsplit(".", 1)[-1])
        if entry.is_file() and kind:
            files[f"/static/{entry.name}"] = (entry.read_bytes(), kind)
    files["/"] = files["/static/index.html"]
    return files


def http_status(exc: MmrecError) -> HTTPStatus:
    """The HTTP status that says what the service's refusal means (502 for any other)."""
    return next((code for kind, code in HTTP_OF if isinstance(exc, kind)), HTTPStatus.BAD_GATEWAY)


class ExplorerServer(ThreadingHTTPServer):
    """A threading HTTP server holding the API, the assets and the hosts it answers to."""

    daemon_threads = True

    def __init__(self, api: ExplorerApi, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api = api
        self.assets = static_files()
        super().__init__((host, port), ExplorerHandler)
        self.loopback = host in LOOPBACK_NAMES
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (loopback name when it listens on every address)."""
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else str(host)
        return f"http://{shown}:{port}/"

    def start(self) -> None:
        """Serve on a background thread (tests, the demo)."""
        self._thread = threading.Thread(target=self.serve_forever, name="mmrec-explore",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (when started), close the socket and the clients' channels."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(10)
        self.server_close()
        self.api.close()


class ExplorerHandler(BaseHTTPRequestHandler):
    """One request: a static asset, an API call, or a thumbnail."""

    server: ExplorerServer
    server_version = "mmrec-explore"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Access lines at debug level (the page makes many small requests)."""
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        """Assets, thumbnails, and the read-only API endpoints."""
        if not self._host_ok():
            return
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        api = self.server.api
        gets: dict[str, Callable[[], dict[str, Any]]] = {
            "/api/info": lambda: api.info(self._key()),
            "/api/facets": lambda: api.facets(query),
            "/api/user": lambda: api.user(query),
        }
        if parts.path in self.server.assets:
            body, kind = self.server.assets[parts.path]
            self._send(HTTPStatus.OK, body, kind, cache="no-cache")
        elif parts.path == "/api/thumb":
            self._answer(lambda: self._thumbnail(query))
        elif parts.path in gets:
            self._answer(lambda: self._json(HTTPStatus.OK, gets[parts.path]()))
        else:
            self._error(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no page at {parts.path}")

    def do_POST(self) -> None:
        """The endpoints that call the service with a JSON body."""
        if not self._host_ok() or not self._same_origin():
            return
        api = self.server.api
        posts: dict[str, Callable[[dict[str, Any], str | None], dict[str, Any]]] = {
            "/api/search": api.search, "/api/recommend": api.recommend,
            "/api/events": api.record, "/api/erase": api.erase,
        }
        path = urlsplit(self.path).path
        endpoint = posts.get(path)
        if endpoint is None:
            self._error(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no endpoint at {path}")
            return
        self._answer(lambda: self._json(HTTPStatus.OK, endpoint(self._body(), self._key())))

    def _answer(self, respond: Callable[[], None]) -> None:
        """Run ``respond``; a domain error is a readable message, any other fault one line."""
        try:
            respond()
        except MmrecError as exc:
            self._error(http_status(exc), exc.status or type(exc).__name__, str(exc))
        except Exception:
            log.exception("explorer request %s failed", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL",
                        "the explorer failed on this request; its log has the details")

    def _thumbnail(self, query: dict[str, str]) -> None:
        thumb = self.server.api.thumbnail(query, self._key())
        reason = " ".join(thumb.placeholder_reason.split())  # one header-safe line
        extra = {"X-Mmrec-Placeholder": reason.encode("ascii", "replace").decode()[:300]} \
            if reason else {}
        self._send(HTTPStatus.OK, thumb.body, thumb.content_type, cache="private, max-age=300",
                   extra=extra)

    def _body(self) -> dict[str, Any]:
        """The request's JSON object (InvalidInput for anything else)."""
        if self.headers.get_content_type() != "application/json":
            raise InvalidInput("send the request as application/json")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise InvalidInput(f"request of {length:,} bytes, above {MAX_BODY_BYTES:,}")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"the request is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidInput("the request must be a JSON object")
        return body

    def _key(self) -> str | None:
        """The page's API key (``Authorization: Bearer KEY``), or None for the explorer's."""
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None

    def _host_ok(self) -> bool:
        """Refuse (421) a Host that is not a loopback name when listening on loopback."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if not self.server.loopback or host in LOOPBACK_NAMES:
            return True
        self._error(HTTPStatus.MISDIRECTED_REQUEST, "FORBIDDEN_HOST",
                    f"this explorer answers to loopback names only, not {host!r}")
        return False

    def _same_origin(self) -> bool:
        """Refuse (403) a write sent by a page served from elsewhere."""
        origin = self.headers.get("Origin")
        if origin is None or urlsplit(origin).netloc == self.headers.get("Host"):
            return True
        self._error(HTTPStatus.FORBIDDEN, "FORBIDDEN_ORIGIN",
                    f"requests from {origin} are not accepted")
        return False

    def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, allow_nan=False).encode(),
                   "application/json", cache="no-store")

    def _error(self, status: HTTPStatus, name: str, message: str) -> None:
        self._json(status, {"error": {"status": name, "message": message}})

    def _send(self, status: HTTPStatus, body: bytes, kind: str, *, cache: str,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": kind, "Content-Length": str(len(body)),
                   "Cache-Control": cache, "Content-Security-Policy": CSP,
                   "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                   "X-Frame-Options": "DENY", **(extra or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
