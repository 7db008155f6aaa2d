"""What the server starts for observability, in one object: interceptors, metrics, tracing.

:func:`engine.service.server.start_server` builds a :class:`Telemetry` from the config
before the grpc server (it needs the interceptors), hands it the engine and the lanes once
the servicer exists (:meth:`Telemetry.watch`: the scrape-time gauges and, with
``service.metrics_port``, the HTTP endpoint), and closes it on stop. Request ids and access
lines are always on; metrics when ``metrics_port`` is set; tracing when ``tracing`` is.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from engine.config import ServiceSettings
from engine.domain import DEFAULT_TENANT
from engine.runtime import Engine
from engine.service.calls import CallInterceptor
from engine.service.lanes import Lane
from engine.service.metrics import MetricsEndpoint, ServiceMetrics, TenantCensus
from engine.service.tracing import Tracing, start_tracing


class Telemetry:
    """Interceptors to install, then the metrics endpoint; :meth:`close` stops it."""

    def __init__(self, settings: ServiceSettings) -> None:
        """Fails (FailedPrecondition) when tracing is asked for and not installed."""
        self.settings = settings
        self.metrics = ServiceMetrics() if settings.metrics_port else None
        self.tenants = TenantCensus([DEFAULT_TENANT])
        self.tracing: Tracing | None = start_tracing() if settings.tracing else None
        self.endpoint: MetricsEndpoint | None = None
        self.calls = CallInterceptor(
            self.metrics, tenants=self.tenants,
            observer=self.tracing.observer if self.tracing else None,
            on_call=self.tracing.on_call if self.tracing else None)

    @property
    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Outermost first: tracing's span, then request id, access line and metrics."""
        return [self.tracing.interceptor, self.calls] if self.tracing else [self.calls]

    def watch(self, engine: Engine, lanes: Sequence[Lane]) -> None:
        """Export the engine's and the lanes' gauges and start the HTTP endpoint, if on."""
        if self.metrics is None:
            return
        self.metrics.watch(engine, lanes, self.tenants)
        self.endpoint = MetricsEndpoint(self.metrics, self.settings.metrics_host,
                                        self.settings.metrics_port)

    def close(self) -> None:
        """Stop the metrics endpoint (the port is free again)."""
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
