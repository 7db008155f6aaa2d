"""Image bytes for catalog rows: local paths, ``file://`` URIs and, when allowed, HTTP(S).

Bulk jobs call this from a worker pool, once per row with an image. Everything
that can go wrong with one image (missing file, oversize, a path outside the
catalog's folder, a FIFO or device, HTTP error, timeout) is raised as a domain
error with a sentence a person can act on, so the job dead-letters the row and
goes on. HTTP and paths outside the catalog's folder are off unless the job asks
for them: a catalog should not make the indexer read the machine's files or
reach out to arbitrary hosts by surprise (see ``indexers.localfiles``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from time import monotonic, sleep
from urllib.parse import urlparse

import httpx

from engine.domain import InvalidInput, Unavailable
from engine.encoders.images import resolve_image_path
from indexers.localfiles import read_local_file, too_big

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchOptions:
    """How images are fetched: whether HTTP and outside paths are allowed, HTTP timeout and
    retries, a size cap."""

    allow_http: bool = False
    allow_outside_paths: bool = False
    """Read local images outside the catalog's folder (absolute paths elsewhere, ``..``,
    symlinks that lead out). Off: such a row is dead-lettered, nothing outside is opened."""
    timeout: float = 10.0
    """Seconds per HTTP attempt (connecting and reading the whole body)."""
    retries: int = 2
    """Extra HTTP attempts after a timeout, a connection error, a 5xx or a 429."""
    max_bytes: int = 20 * 1024 * 1024
    """Largest image accepted, local or HTTP; checked before reading (the job's default is the
    service's ``max_image_bytes``, so both paths into the store take the same images)."""
    backoff: float = 0.5
    """Seconds before the first retry; each later retry waits twice as long as the one before."""


class _Retryable(Exception):
    """An HTTP attempt failed in a way another attempt may not (timeout, 5xx, dropped link)."""

    def __init__(self, reason: str, status: int = 0) -> None:
        super().__init__(reason)
        self.status = status


def fetch_image_bytes(uri: str, base_dir: Path | None, options: FetchOptions) -> bytes:
    """The encoded bytes of the image ``uri`` names; relative paths resolve against ``base_dir``.

    A local file must resolve inside ``base_dir`` (the catalog's folder) unless
    ``options.allow_outside_paths`` or ``base_dir`` is None, and must be a regular file.
    Raises NotFound for a missing file, InvalidInput for anything the row must fix
    (oversize, outside the folder, not a regular file, unsupported scheme, HTTP off, an
    HTTP error status) and Unavailable when a host could not be reached in time after all
    retries.
    """
    if not uri.strip():
        raise InvalidInput("image URI is empty")
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        if not options.allow_http:
            raise InvalidInput(f"image {uri} is a web address and HTTP fetching is off; run the "
                               "job with --allow-http (FetchOptions(allow_http=True)) to "
                               "download images")
        return _fetch_http(uri, options)
    try:
        path = resolve_image_path(uri, base_dir)
    except InvalidInput as exc:
        raise InvalidInput(f"image URI {uri!r} has the scheme {scheme!r}, which is not "
                           "supported; use a file path, file:// or http(s)://") from exc
    root = None if options.allow_outside_paths else base_dir
    return read_local_file(path, what="image", max_bytes=options.max_bytes, root=root)


@functools.lru_cache(maxsize=8)
def _client(timeout: float) -> httpx.Client:
    """One shared client per timeout, so workers reuse connections (httpx clients are
    thread-safe); it lives as long as the process."""
    return httpx.Client(timeout=timeout, follow_redirects=True,
                        headers={"User-Agent": "mmrec-indexer"})


def _fetch_http(uri: str, options: FetchOptions) -> bytes:
    """GET with retries and exponential backoff; InvalidInput or Unavailable when all fail."""
    attempts = max(options.retries, 0) + 1
    failure = _Retryable("was not tried")
    for attempt in range(attempts):
        if attempt:
            delay = options.backoff * 2 ** (attempt - 1)
            log.debug("image %s %s; retrying in %.2f s", uri, failure, delay)
            sleep(delay)
        try:
            return _http_attempt(uri, options)
        except _Retryable as exc:
            failure = exc
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    if failure.status:
        raise InvalidInput(f"image {uri} {failure} after {tries}")
    raise Unavailable(f"image {uri} {failure} after {tries}; check the host or raise the "
                      "timeout")


def _http_attempt(uri: str, options: FetchOptions) -> bytes:
    """One GET of the whole body within ``options.timeout`` seconds."""
    deadline = monotonic() + options.timeout
    try:
        with _client(options.timeout).stream("GET", uri) as response:
            code = response.status_code
            if code == 429 or code >= 500:
                raise _Retryable(f"answered HTTP {code} {response.reason_phrase}", code)
            if not response.is_success:
                raise InvalidInput(f"image {uri} answered HTTP {code} {response.reason_phrase}")
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > options.max_bytes:
                raise InvalidInput(too_big(f"image {uri}", int(length), options.max_bytes,
                                           "--max-image-bytes"))
            return _read_body(uri, response, options.max_bytes, deadline, options.timeout)
    except httpx.TimeoutException as exc:
        raise _Retryable(f"timed out after {options.timeout:g} s") from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise InvalidInput(f"image URL {uri!r} is not valid: {exc}") from exc
    except httpx.TransportError as exc:
        raise _Retryable(f"could not be fetched ({exc.__class__.__name__}: {exc})") from exc
    except httpx.HTTPError as exc:
        raise InvalidInput(f"image {uri} could not be fetched: {exc}") from exc


def _read_body(uri: str, response: httpx.Response, max_bytes: int, deadline: float,
               timeout: float) -> bytes:
    """The streamed body, stopped as soon as it passes ``max_bytes`` or the deadline."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidInput(f"image {uri} is more than {max_bytes:,} bytes, above the limit; "
                               "shrink the image or raise the limit")
        if monotonic() > deadline:
            raise _Retryable(f"timed out after {timeout:g} s (body still arriving)")
        chunks.append(chunk)
    return b"".join(chunks)
