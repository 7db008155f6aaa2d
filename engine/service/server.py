"""Starting and stopping the gRPC server: health, reflection, API keys, TLS, graceful SIGTERM.

Auth (:mod:`engine.service.auth`) is on when ``auth.enabled`` says so, or by default when
the service binds anything but loopback. A server with auth on and no key yet still starts:
it answers health checks, every other call is UNAUTHENTICATED with how to make a key, and a
key made with ``mmrec keys create`` counts at the next call, so an orchestrator can start
the service before anyone holds a key and nothing is served unauthenticated meanwhile.
"""

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
from engine.service.auth import ApiKeyInterceptor, log_auth_state, server_credentials
from engine.service.health_monitor import StoreHealthMonitor
from engine.service.keys import KeyFile
from engine.service.proto.mmrec.v1 import recommender_pb2 as pb
from engine.service.ratelimit import KeyRateLimiter
from engine.service.servicer import RecommenderService
from engine.service.telemetry import Telemetry

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
    monitor: StoreHealthMonitor | None = None
    """Flips health to NOT_SERVING while the store does not answer (None: not probing)."""
    telemetry: Telemetry | None = None
    """Request ids, access lines, metrics endpoint and tracing (engine.service.telemetry)."""

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish within ``grace`` seconds, then stop."""
        if self.monitor is not None:
            await self.monitor.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.service.close()
        if self.telemetry is not None:
            self.telemetry.close()


async def start_server(engine: Engine, config: EngineConfig, *, port: int | None = None
                       ) -> RunningServer:
    """Start serving ``engine`` on ``config.service.host``; ``port=0`` picks a free port.

    With auth on, an :class:`ApiKeyInterceptor` over the key file checks every call; with
    ``auth.tls_cert`` set, the port speaks TLS only (mTLS with ``auth.client_ca``).
    """
    settings = config.service
    limits = settings.limits
    keys = KeyFile(config.key_path()) if config.auth_enabled() else None
    telemetry = Telemetry(settings)  # request ids, metrics, tracing: outside the key check
    server = grpc.aio.server(
        interceptors=[*telemetry.interceptors, *(
            [ApiKeyInterceptor(keys, KeyRateLimiter.from_limits(limits))] if keys is not None
            else [])],
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_response_bytes),
        ])
    service = RecommenderService(engine, settings, auth=keys is not None)
    telemetry.watch(engine, (service.plain, service.llm))  # service.metrics_port: endpoint
    wire.add_to_server(service, server)  # undecodable bytes: INVALID_ARGUMENT, not UNKNOWN
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    address = f"{settings.host}:{settings.port if port is None else port}"
    credentials = server_credentials(config.auth)
    bound = (server.add_insecure_port(address) if credentials is None
             else server.add_secure_port(address, credentials))
    if bound == 0:
        raise OSError(f"cannot listen on {address}: is the port in use?")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    monitor = None
    if settings.health_probe_seconds > 0:  # health follows the store (engine.store may change)
        monitor = StoreHealthMonitor(
            health_servicer, lambda: engine.store.reachable() and engine.users.reachable(),
            ("", SERVICE_NAME), settings.health_probe_seconds)
        monitor.start()
    log.info("mmrec serving %s on %s:%d (%s)", SERVICE_NAME, settings.host, bound,
             "plaintext" if credentials is None else
             "TLS, client certificates required" if config.auth.client_ca else "TLS")
    log_auth_state(config, keys)
    return RunningServer(server=server, port=bound, health=health_servicer, service=service,
                         monitor=monitor, telemetry=telemetry)


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
