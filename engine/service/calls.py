"""Each mmrec.v1 call's request id, access log line and metrics, from one interceptor.

:class:`CallInterceptor` is the outermost of the service's own interceptors, so it sees
every call, those the API key check refuses included. For each Recommender call it takes
the client's ``x-request-id`` metadata when it is sane (:func:`request_id`: at most
:data:`MAX_REQUEST_ID` characters of letters, digits and ``._:-``), else makes one; echoes
it in the response's initial metadata; puts it and the RPC's name in :data:`REQUEST_ID` and
:data:`RPC`, context variables that every log line of the call reads
(:mod:`engine.service.logs`) and that the lanes carry into their threads; then, when the
call ends, writes one access log line (``engine.service.access``: rpc, code, ms) and feeds
:class:`~engine.service.metrics.ServiceMetrics`.

The status is read from the context after the handler: ``context.abort`` (how
:func:`~engine.service.status.mapped_errors` and the API key check answer) sets the code
before it raises, so INVALID_ARGUMENT or UNAUTHENTICATED are counted as such, not as
errors of the interceptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

import grpc

from engine.domain import MmrecError
from engine.domain.timing import STAGE_OBSERVER, StageObserver
from engine.service.metrics import ServiceMetrics, TenantCensus
from engine.service.validate import tenant as resolve_tenant
from engine.service.wire import rpc_name

ACCESS_LOGGER = "engine.service.access"
access_log = logging.getLogger(ACCESS_LOGGER)

HEADER = "x-request-id"
MAX_REQUEST_ID = 128
SAFE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_REQUEST_ID}}}")
"""What a client's request id may be; anything else is replaced, not echoed or logged."""
SERVER_FAULTS = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNAVAILABLE"})
"""Codes whose access line is a warning: the server's fault, not the caller's."""

REQUEST_ID: ContextVar[str] = ContextVar("mmrec_request_id", default="")
"""The current call's request id ("" outside a call)."""
RPC: ContextVar[str] = ContextVar("mmrec_rpc", default="")
"""The current call's RPC name, e.g. "Search" ("" outside a call)."""

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
CallHook = Callable[[str, str], None]
"""Called with (rpc, request id) as a call starts (tracing names its span with them)."""


def request_id(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The client's ``x-request-id`` when it is sane, else a new random one (32 hex digits)."""
    for key, value in metadata or ():
        if key.lower() == HEADER and isinstance(value, str) and SAFE_REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def _code_name(context: grpc.aio.ServicerContext) -> str:
    """The status the handler left: the aborted or set code, else OK."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions keep the numeric value
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "OK"


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Request id, access log line and metrics for every mmrec.v1.Recommender call."""

    def __init__(self, metrics: ServiceMetrics | None = None, *,
                 tenants: TenantCensus | None = None, observer: StageObserver | None = None,
                 on_call: CallHook | None = None) -> None:
        self.metrics, self.tenants = metrics, tenants
        self.observer, self.on_call = observer, on_call

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The call's handler (as the later interceptors leave it), wrapped."""
        handler = await continuation(details)
        rpc = rpc_name(details.method)
        if handler is None or rpc is None:
            return handler  # health, reflection, or an unknown method (UNIMPLEMENTED)
        rid = request_id(details.invocation_metadata)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap(rpc, rid, handler.unary_unary))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._wrap(rpc, rid, handler.stream_unary))
        return handler

    def _wrap(self, rpc: str, rid: str, behaviour: Behaviour) -> Behaviour:
        """``behaviour`` inside the call's request id, timing, metrics and access line."""

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            REQUEST_ID.set(rid)
            RPC.set(rpc)
            if self.observer is not None:
                STAGE_OBSERVER.set(self.observer)
            if self.on_call is not None:
                self.on_call(rpc, rid)
            await context.send_initial_metadata(((HEADER, rid),))
            start, code, response = time.perf_counter(), "UNKNOWN", None
            try:
                response = await behaviour(request, context)
                code = _code_name(context)
                return response
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                self._finished(rpc, code, time.perf_counter() - start, request, response)

        return call

    def _finished(self, rpc: str, code: str, seconds: float, request: Any,
                  response: Any) -> None:
        """The access line, the metrics, and the tenant a successful unary call served."""
        ms = round(seconds * 1000.0, 3)
        level = logging.WARNING if code in SERVER_FAULTS else logging.INFO
        access_log.log(level, "%s %s %.1f ms", rpc, code, ms, extra={"code": code, "ms": ms})
        if self.metrics is not None:
            self.metrics.observe(rpc, code, seconds, response)
        if self.tenants is not None and code == "OK":
            name = getattr(request, "tenant", None)  # unary messages; a stream has none
            if isinstance(name, str):
                with contextlib.suppress(MmrecError):  # a bad name was refused: not counted
                    self.tenants.add(resolve_tenant(name))
