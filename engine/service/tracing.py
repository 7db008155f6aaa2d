"""Optional OpenTelemetry tracing: a span per RPC and a child span per pipeline stage.

Off unless ``service.tracing = true``. Then the service adds OpenTelemetry's grpc.aio server
interceptor (a span per call, continuing the caller's trace from its metadata) and sets
:data:`engine.domain.timing.STAGE_OBSERVER` for each call, so every timed stage (encode,
retrieve, rerank, explain, ...) runs in a span ``mmrec.<stage>`` under the call's span; the
span of a call carries its ``mmrec.request_id``. Spans go to the process's tracer provider
(``opentelemetry.trace.set_tracer_provider``, e.g. an SDK provider with an OTLP exporter set
up by the program that runs the server); with none configured they are dropped, and the
service says so at startup. The packages are the ``tracing`` extra; asking for tracing
without them is an error at startup that says what to install.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import grpc

from engine.domain import FailedPrecondition
from engine.domain.timing import StageObserver

log = logging.getLogger(__name__)

INSTALL = "pip install 'mmrec[tracing]' (opentelemetry-sdk, opentelemetry-instrumentation-grpc)"


@dataclass(frozen=True)
class Tracing:
    """What the server installs when tracing is on."""

    interceptor: grpc.aio.ServerInterceptor
    """OpenTelemetry's span per call; goes before the service's own interceptors."""
    observer: StageObserver
    """A span per stage, under the call's."""

    def on_call(self, rpc: str, request_id: str) -> None:
        """Name the call's span with its request id (the same id its log lines carry)."""
        from opentelemetry import trace

        trace.get_current_span().set_attribute("mmrec.request_id", request_id)


def start_tracing(tracer_provider: Any = None) -> Tracing:
    """The interceptor and stage spans over ``tracer_provider`` (None: the global one).

    FailedPrecondition naming the extra when OpenTelemetry is not installed.
    """
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
    except ImportError as exc:
        raise FailedPrecondition(f"service.tracing is on but OpenTelemetry is not installed "
                                 f"({exc.name or exc}): {INSTALL}, or set service.tracing = "
                                 f"false") from exc
    provider = tracer_provider or trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        log.warning("service.tracing is on but no OpenTelemetry tracer provider is set: spans "
                    "are dropped until the program sets one (trace.set_tracer_provider)")
    tracer = trace.get_tracer("engine.service", tracer_provider=provider)

    def stage_span(name: str) -> AbstractContextManager[object]:
        """A span for one stage, current while the stage runs."""
        span: AbstractContextManager[object] = tracer.start_as_current_span(f"mmrec.{name}")
        return span

    return Tracing(interceptor=aio_server_interceptor(tracer_provider=provider),
                   observer=stage_span)
