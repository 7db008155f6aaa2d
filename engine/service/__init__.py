"""The gRPC service: validation, deadlines, status codes, health and reflection."""

from engine.service.server import RunningServer, serve, start_server

__all__ = ["RunningServer", "serve", "start_server"]
