"""Registering the servicer so that undecodable bytes are a client's mistake, not UNKNOWN.

The generated ``add_RecommenderServicer_to_server`` gives grpc the messages'
``FromString`` as deserializers; when it raises (garbage bytes, invalid UTF-8 in
a string field, a truncated message) grpc-aio answers UNKNOWN for a unary call
and ends a stream in the middle. Here each method is registered from the proto's
own service descriptor with a deserializer that never raises: a message that
does not parse arrives as :class:`Malformed`, which the unary handlers answer
with INVALID_ARGUMENT (:func:`engine.service.status.mapped_errors`) and the
streaming ones report by index and skip, like any other bad message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from engine.service.proto.mmrec.v1 import recommender_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"]
_PREFIX = f"/{SERVICE.full_name}/"


def rpc_name(method: str) -> str | None:
    """The Recommender RPC a call's full method name names (``"Search"``), or None for health,
    reflection and any other service (the interceptors let those pass untouched)."""
    return method[len(_PREFIX):] if method.startswith(_PREFIX) else None


@dataclass(frozen=True)
class Malformed:
    """A request message whose bytes did not parse: what was expected and why it failed."""

    expected: str
    reason: str

    def __str__(self) -> str:
        return (f"the bytes sent are not a valid {self.expected} message ({self.reason}); "
                "send it serialised by a protobuf library from protos/mmrec/v1")


def lenient(message_class: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """A deserializer for ``message_class`` that returns :class:`Malformed` instead of raising."""
    name = message_class.DESCRIPTOR.name

    def parse(data: bytes) -> Message | Malformed:
        try:
            return message_class.FromString(data)
        except Exception as error:  # DecodeError, invalid UTF-8, recursion limits alike
            return Malformed(name, str(error) or type(error).__name__)

    return parse


def add_to_server(servicer: Any, server: grpc.aio.Server) -> None:
    """Register ``servicer``'s methods for every RPC of ``mmrec.v1.Recommender``."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        request = GetMessageClass(method.input_type)
        response = GetMessageClass(method.output_type)
        kind = (grpc.stream_unary_rpc_method_handler if method.client_streaming
                else grpc.unary_unary_rpc_method_handler)
        if method.server_streaming:
            raise NotImplementedError(f"{method.name}: server streaming is not used by mmrec")
        handlers[method.name] = kind(getattr(servicer, method.name),
                                     request_deserializer=lenient(request),
                                     response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
