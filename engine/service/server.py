"""Starting and stopping the gRPC server: health, reflection, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.config import EngineConfig
from engine.runtime.engine import Engine
from engine.service import wire
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.servicer import RecommenderService

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
"""'mmrec.v1.Recommender', as health checks and reflection name it."""


@dataclass
class RunningServer:
    """A started server, the port it listens on, and how to stop it."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service: RecommenderService

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish within ``grace`` seconds, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.service.close()


async def start_server(engine: Engine, config: EngineConfig, *, port: int | None = None
                       ) -> RunningServer:
    """Start serving ``engine`` on ``config.service.host``; ``port=0`` picks a free port."""
    settings = config.service
    max_bytes = settings.max_image_bytes + 1024 * 1024
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ])
    service = RecommenderService(engine, settings)
    wire.add_to_server(service, server)  # undecodable bytes: INVALID_ARGUMENT, not UNKNOWN
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    address = f"{settings.host}:{settings.port if port is None else port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}: is the port in use?")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("mmrec serving %s on %s:%d", SERVICE_NAME, settings.host, bound)
    return RunningServer(server=server, port=bound, health=health_servicer, service=service)


async def serve_until_signal(engine: Engine, config: EngineConfig,
                             ready: threading.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully and close the store."""
    running = await start_server(engine, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: draining in-flight calls for up to %.1f s",
             config.service.grace_seconds)
    await running.stop(config.service.grace_seconds)
    engine.close()
    log.info("stopped")


def serve(config: EngineConfig) -> None:
    """Load the engine from ``config`` and serve it until a signal (the `mmrec serve` command)."""
    engine = Engine.from_config(config)
    asyncio.run(serve_until_signal(engine, config))
