"""`mmrec explore`: serve the explorer web page for a running service.

The page talks to the service through the explorer's JSON layer over the Python client
(``engine.explore``); this module only reads the options, starts the server and waits.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from engine.explore import ExplorerServer, ImageRoots, ServiceTarget, make_explorer

DEFAULT_SERVICE = "127.0.0.1:50051"


class ExplorerNotStarted(Exception):
    """The explorer could not bind its address; the message says why and what to change."""
console = Console()


def start_explorer(service: str, *, port: int, host: str = "127.0.0.1",
                   api_key: str | None = None, tls_ca: Path | None = None,
                   images_roots: list[Path] | None = None) -> ExplorerServer:
    """An explorer serving on a background thread, its URL in ``.url`` (the demo uses it)."""
    images = ImageRoots(images_roots or [])
    for missing in images.missing:
        console.print(f"[yellow]image folder not found[/]: {missing} (placeholders instead)")
    try:
        server = make_explorer(ServiceTarget(service, api_key=api_key, tls_ca=tls_ca),
                               host=host, port=port, images=images)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise ExplorerNotStarted(f"the explorer cannot listen on {host}:{port}: "
                                 f"{exc.strerror or exc}; choose another --port") from exc
    server.start()
    return server


def wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def explore(
    port: Annotated[int, typer.Option(help="Port of the web page (0: any free port).")] = 8765,
    service: Annotated[str, typer.Option(help="The mmrec service, host:port.",
                                         envvar="MMREC_TARGET")] = DEFAULT_SERVICE,
    host: Annotated[str, typer.Option(
        help="Address the page listens on; loopback by default (the page has no login of "
        "its own: anyone who reaches it acts with its API key).")] = "127.0.0.1",
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="MMREC_API_KEY", show_default=False,
        help="API key forwarded to a service with auth on (a page may send its own).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        "--tls-ca", exists=True, dir_okay=False,
        help="PEM certificate(s) to trust for a service with TLS.")] = None,
    images_root: Annotated[list[Path] | None, typer.Option(
        "--images-root", file_okay=False,
        help="Folder thumbnails may be read from (repeat for several); items whose image "
        "lies elsewhere show a placeholder.")] = None,
) -> None:
    """Serve the explorer web page (search, explanations, users, timings) until Ctrl-C."""
    try:
        server = start_explorer(service, port=port, host=host, api_key=api_key,
                                tls_ca=tls_ca, images_roots=images_root)
    except ExplorerNotStarted as exc:
        console.print(f"[red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"explorer for {service}: open {server.url}  (Ctrl-C stops it)",
                  highlight=False)
    try:
        wait_for_interrupt()
    finally:
        server.stop()
