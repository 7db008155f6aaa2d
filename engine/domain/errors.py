"""Domain exceptions.

Every layer below the service raises these; the service maps them to gRPC
status codes in exactly one place (``engine.service.status``). Messages are
written for a person: they say what was wrong and what to do about it.
"""

from __future__ import annotations


class MmrecError(Exception):
    """Base class of every error mmrec raises on purpose."""

    status: str = ""
    """The gRPC status name when the error came from a remote service ("INVALID_ARGUMENT");
    empty when it was raised in this process."""


class InvalidInput(MmrecError):
    """The caller sent something we cannot use (maps to INVALID_ARGUMENT)."""


class NotFound(MmrecError):
    """A named thing (item, user, file) does not exist (maps to NOT_FOUND)."""


class FailedPrecondition(MmrecError):
    """The request is valid but the engine is not in a state to serve it.

    Example: an image query while the CLIP channel is off because no weights
    are available offline (maps to FAILED_PRECONDITION).
    """


class Unavailable(MmrecError):
    """A dependency is temporarily unusable; retrying may help (maps to UNAVAILABLE)."""


class Overloaded(MmrecError):
    """The server is at a limit it sets itself (queue bound, rate); retry later, after backing
    off (maps to RESOURCE_EXHAUSTED)."""


class Unauthenticated(MmrecError):
    """The call carries no API key, or one the server does not know (unknown, revoked,
    mistyped); maps to UNAUTHENTICATED. The message says how to send a key and make one."""


class PermissionDenied(MmrecError):
    """The API key is valid but does not cover the call: its role is below the one the RPC
    needs, or the request's tenant is not one of the key's (maps to PERMISSION_DENIED). The
    message names the role or tenant needed, never the key."""


class ModelUnavailable(MmrecError):
    """Model weights cannot be loaded (missing offline, bad file, unknown name).

    Raised by the encoder factory; the engine turns the matching channel off
    and reports the reason instead of substituting random weights.
    """


class SchemaMismatch(FailedPrecondition):
    """An existing store was built with other vector channels or sizes than the engine's."""


class RemoteError(MmrecError):
    """A remote service answered with a status no domain error stands for (DEADLINE_EXCEEDED,
    INTERNAL, ...); ``status`` names it and the message is the server's."""
