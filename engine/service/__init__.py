"""The gRPC service: validation, deadlines, status codes, health and reflection.

``serve``, ``start_server`` and ``RunningServer`` are loaded on first use: the Python client
(``engine.client``) imports this package for its conversions and status codes, and must not
pay for the server's imports (the engine, torch, the models: seconds) in every client
process, a Ray indexing actor or a CLI call that only talks to a running service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.service.server import RunningServer, serve, start_server

__all__ = ["RunningServer", "serve", "start_server"]


def __getattr__(name: str) -> Any:
    """The server's names, imported when first asked for."""
    if name in __all__:
        from engine.service import server

        return getattr(server, name)
    raise AttributeError(f"module 'engine.service' has no attribute {name!r}")
