"""Authentication and authorisation of the mmrec.v1.Recommender RPCs.

:class:`ApiKeyInterceptor` runs before every call. Health (grpc.health.v1) and reflection
pass untouched; every Recommender RPC needs a valid key in its metadata
(``authorization: Bearer KEY`` or ``x-api-key: KEY``) or answers UNAUTHENTICATED, and a key
whose role is below the RPC's (:data:`ROLE_OF`) answers PERMISSION_DENIED before any message
is read, and a key over its call rate (:mod:`engine.service.ratelimit`) answers
RESOURCE_EXHAUSTED. The key's :class:`~engine.service.keys.Principal` is then put in
:data:`PRINCIPAL`, a context variable grpc.aio carries from the interceptor into the handler,
where the servicer checks each request's tenant (:func:`tenant_refusal`): a unary call for
another tenant is PERMISSION_DENIED, a streamed message for one is rejected by index and the
stream goes on.

With auth off (a loopback service) no interceptor is installed and nothing here runs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import grpc

from engine.config import AuthSettings, EngineConfig, is_loopback
from engine.domain import (
    EngineInfo,
    FailedPrecondition,
    MmrecError,
    ModelStatus,
    PermissionDenied,
    Unauthenticated,
)
from engine.service.keys import KeyFile, Principal, Role
from engine.service.ratelimit import KeyRateLimiter
from engine.service.status import status_code
from engine.service.wire import rpc_name

log = logging.getLogger(__name__)

ROLE_OF: dict[str, Role] = {
    "Search": Role.READ,
    "GetItems": Role.READ,
    "Recommend": Role.READ,
    "GetInfo": Role.READ,
    "UpsertItems": Role.WRITE,
    "DeleteItems": Role.WRITE,
    "RecordEvents": Role.WRITE,
    "DeleteUser": Role.WRITE,  # erasure of a user's data: a write, not an admin task
}
"""The role each RPC needs. An RPC missing here needs admin, so a new RPC is closed until
it is placed."""

PRINCIPAL: ContextVar[Principal | None] = ContextVar("mmrec_principal", default=None)
"""The caller of the current RPC, set by :class:`ApiKeyInterceptor` (None: auth is off)."""

HOW_TO_SEND = ("send it in the call's metadata as `authorization: Bearer KEY` or "
               "`x-api-key: KEY` (MmrecClient(..., api_key=KEY), `mmrec ... --api-key KEY` or "
               "MMREC_API_KEY)")
HOW_TO_CREATE = ("an operator creates one with `mmrec keys create --data-dir DIR --tenant T "
                 "--role read|write|admin`")


def key_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The API key a call presents (``authorization: Bearer`` first, then ``x-api-key``)."""
    values = {key.lower(): value for key, value in metadata or ()
              if isinstance(value, str)}
    bearer = values.get("authorization", "")
    scheme, _, token = bearer.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return values.get("x-api-key", "").strip() or None


def authenticate(keys: KeyFile, metadata: Sequence[tuple[str, str | bytes]] | None
                 ) -> Principal:
    """The principal of the call's key; Unauthenticated with what to do when there is none."""
    token = key_from_metadata(metadata)
    principal = keys.verify(token) if token else None
    if principal is not None:
        return principal
    if keys.error:
        raise Unauthenticated("the server cannot read its API key file (its log says why), "
                              "so no key is accepted: ask its operator")
    none_yet = not keys.keys()
    if token is None:
        raise Unauthenticated(
            f"this server requires an API key and has none yet: {HOW_TO_CREATE}, then "
            f"{HOW_TO_SEND}" if none_yet else
            f"this call has no API key: {HOW_TO_SEND}; {HOW_TO_CREATE}")
    raise Unauthenticated("the API key is not valid (unknown, revoked or mistyped)"
                          + ("; this server has no keys now" if none_yet else "")
                          + f": send a current key; {HOW_TO_CREATE}")


def authorise_role(principal: Principal, rpc: str) -> None:
    """PermissionDenied when the key's role is below the one ``rpc`` needs."""
    needed = ROLE_OF.get(rpc, Role.ADMIN)
    if not principal.role.covers(needed):
        raise PermissionDenied(
            f"API key {principal.key_id} has role {principal.role.value!r}; {rpc} needs role "
            f"{needed.value!r} (or higher): use a key created with --role {needed.value}")


def caller(required: bool) -> Principal | None:
    """The current call's principal; with ``required`` (auth on), Unauthenticated when the
    interceptor left none, so a call it did not see is refused rather than let through."""
    principal = PRINCIPAL.get()
    if principal is None and required:
        raise Unauthenticated(f"this call was not authenticated: {HOW_TO_SEND}")
    return principal


def tenant_refusal(principal: Principal | None, tenant: str) -> str | None:
    """Why ``principal`` may not touch ``tenant`` (a resolved tenant name), or None when it
    may (or auth is off: no principal)."""
    if principal is None or tenant in principal.tenants:
        return None
    return (f"API key {principal.key_id} is bound to tenant(s) {principal.tenant_list()}, not "
            f"{tenant!r}: use a key created with --tenant {tenant}")


def require_tenant(principal: Principal | None, tenant: str) -> str:
    """``tenant`` back when ``principal`` may use it, else PermissionDenied naming it."""
    reason = tenant_refusal(principal, tenant)
    if reason is not None:
        raise PermissionDenied(reason)
    return tenant


def _refusal(handler: grpc.RpcMethodHandler, error: MmrecError) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that answers ``error``'s status without reading the
    request stream."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(status_code(error), str(error))

    kind = (grpc.stream_unary_rpc_method_handler if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler)
    return kind(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Checks the API key and role of every Recommender call; health and reflection pass."""

    def __init__(self, keys: KeyFile, limiter: KeyRateLimiter | None = None) -> None:
        self.keys = keys
        self.limiter = limiter
        """Each key's call rate (None: unlimited); checked after its role."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The call's own handler when its key and role allow it, else a refusing one."""
        handler = await continuation(details)
        rpc = rpc_name(details.method)
        if handler is None or rpc is None:
            return handler  # health, reflection, or an unknown method (UNIMPLEMENTED)
        try:
            principal = authenticate(self.keys, details.invocation_metadata)
            authorise_role(principal, rpc)
            if self.limiter is not None:
                self.limiter.take(principal.key_id)
        except MmrecError as exc:
            return _refusal(handler, exc)
        PRINCIPAL.set(principal)
        return handler


def server_credentials(settings: AuthSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files (mTLS with ``client_ca``), or None."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    pair = (_pem(settings.tls_key, "tls_key"), _pem(settings.tls_cert, "tls_cert"))
    client_ca = _pem(settings.client_ca, "client_ca") if settings.client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _pem(path: Path, setting: str) -> bytes:
    """A PEM file's bytes; FailedPrecondition naming the setting when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FailedPrecondition(f"auth.{setting}: cannot read {path} ({exc.strerror})") from exc


def log_auth_state(config: EngineConfig, keys: KeyFile | None) -> None:
    """One line saying whether and how calls are authenticated; a warning when a server that
    needs keys has none (every call will be UNAUTHENTICATED until one is created)."""
    tls = config.auth.tls_cert is not None
    host = config.service.host
    if keys is None and config.auth.enabled is None:
        log.info("auth off: bound to loopback %s (auth.enabled = true turns it on)", host)
    elif keys is None:
        level = logging.INFO if is_loopback(host) else logging.WARNING
        log.log(level, "auth off (auth.enabled = false): every call on %s is served without "
                "an API key", host)
    if keys is None:
        return
    count = len(keys.keys())
    if keys.error:
        log.warning("auth on, but %s: every call will be UNAUTHENTICATED", keys.error)
    elif count == 0:
        where = (f"--data-dir {keys.path.parent}" if config.auth.key_file is None
                 else "--config <this server's config>")
        log.warning("auth on and no API keys in %s: every call but health and reflection "
                    "will be UNAUTHENTICATED until `mmrec keys create %s --tenant T --role R` "
                    "makes one (no restart needed)", keys.path, where)
    else:
        log.info("auth on: %d API key(s) in %s", count, keys.path)
    if not tls:
        log.warning("auth on without TLS: API keys cross the network in plaintext; set "
                    "auth.tls_cert and auth.tls_key")


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~])/[^\s,;:'\"()\[\]]+")


def hide_paths(text: str) -> str:
    """``text`` with each absolute path cut to its last part ('…/name'), so a tenant learns
    nothing of the server's file system."""
    return ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def tenant_view(info: EngineInfo, item_count: int, store_kind: str,
                tenants: frozenset[str]) -> EngineInfo:
    """What GetInfo tells a key: the count of its tenants' items only, the store's kind
    without its path or address, and model names and reasons without absolute paths.

    A model that serves one tenant (``details["tenant"]``: the behaviour models, the
    tuned fusion) not among the key's ``tenants`` is shown off for it, without its
    details: they name that tenant and describe its log."""
    models = [ModelStatus(m.role, hide_paths(m.name), m.loaded, hide_paths(m.reason),
                          {k: hide_paths(v) for k, v in m.details.items()})
              if "tenant" not in m.details or m.details["tenant"] in tenants
              else ModelStatus(m.role, hide_paths(m.name), False, "serves another tenant")
              for m in info.models]
    return dataclasses.replace(info, store=store_kind, item_count=item_count, models=models)
