"""Domain errors to gRPC status codes and back, in exactly one place.

The service turns a domain error into its status (:func:`status_code`,
:func:`mapped_errors`); the client turns a status back into the domain error
(:func:`error_from_status`), so both ends speak ``engine.domain`` exceptions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from engine.domain import (
    FailedPrecondition,
    InvalidInput,
    MmrecError,
    ModelUnavailable,
    NotFound,
    Overloaded,
    PermissionDenied,
    RemoteError,
    Unauthenticated,
    Unavailable,
)
from engine.service.wire import Malformed

log = logging.getLogger(__name__)

STATUS_OF: dict[type[MmrecError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ModelUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


ERROR_OF: dict[grpc.StatusCode, type[MmrecError]] = {}
"""The inverse of STATUS_OF; a code several classes share comes back as the first listed
(FAILED_PRECONDITION as FailedPrecondition)."""
for _error, _code in STATUS_OF.items():
    ERROR_OF.setdefault(_code, _error)


def error_from_status(code: grpc.StatusCode, details: str) -> MmrecError:
    """The domain error a remote status stands for, carrying the status name and message."""
    error = ERROR_OF.get(code, RemoteError)(details or code.name)
    error.status = code.name
    return error


def status_code(error: MmrecError) -> grpc.StatusCode:
    """The status code for a domain error (most specific class wins)."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


R = TypeVar("R")
Handler = Callable[..., Awaitable[R]]


def mapped_errors(handler: Handler[R]) -> Handler[R]:
    """Wrap an async RPC handler so domain errors become the right status and message.

    A unary request whose bytes did not parse (:class:`~engine.service.wire.Malformed`)
    is INVALID_ARGUMENT. Timeouts become DEADLINE_EXCEEDED; anything unexpected
    becomes INTERNAL with a pointer to the server log (the traceback is logged,
    not sent).
    """

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            if isinstance(request, Malformed):
                raise InvalidInput(str(request))
            return await handler(self, request, context)
        except MmrecError as exc:
            await context.abort(status_code(exc), str(exc))
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                "the request's deadline passed before the work finished; "
                                "allow more time or ask for fewer results")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.exception("unexpected error in %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error ({exc.__class__.__name__}); see the server log")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper
