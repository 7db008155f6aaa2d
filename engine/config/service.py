"""The gRPC service's sections of the configuration: ``[service]`` (address, threads,
telemetry), ``[service.limits]`` (every size, count, time and rate bound a client meets) and
``[auth]`` (API keys, TLS). Re-exported by :mod:`engine.config`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class LimitsSettings(BaseModel):
    """Every bound a client's request meets, in one place (``[service.limits]``, environment
    ``MMREC_SERVICE__LIMITS__MAX_TOP_K`` and so on). A request over a size or count limit is
    INVALID_ARGUMENT saying which limit; over a capacity or rate limit, RESOURCE_EXHAUSTED
    saying when to retry."""

    max_message_bytes: int = Field(
        24 * 1024 * 1024, ge=1024, description="Largest request message the server accepts "
        "(gRPC max receive length); larger ones are refused by gRPC with RESOURCE_EXHAUSTED. "
        "Keep it above `max_image_bytes` plus the item's text.")
    max_response_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest response message the server sends "
        "(gRPC max send length).")
    max_top_k: int = Field(1000, ge=1)
    max_text_chars: int = Field(4096, ge=1)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_ids_per_request: int = Field(1000, ge=1)
    max_queued: int = Field(
        64, ge=1, description="Requests waiting for a thread, per lane (plain, LLM), before "
        "more are refused with RESOURCE_EXHAUSTED (retry with backoff).")
    max_rerank_budget_ms: int = Field(
        5000, ge=0, description="The most LLM time one request may ask for (rerank_budget_ms).")
    max_rerank_top_k: int = Field(100, ge=1, description="The most candidates one request may "
                                  "have re-ranked (rerank_top_k).")
    max_filter_conditions: int = Field(
        64, ge=1, description="Conditions in one filter (must + must_not).")
    max_filter_values: int = Field(1024, ge=1, description="Values in one `any_of` condition.")
    max_image_pixels: int = Field(
        64_000_000, ge=1, description="Pixels of one decoded image (about 8000 x 8000); larger "
        "ones are refused as likely decompression bombs.")
    max_stream_messages: int = Field(
        100_000, ge=1, description="Messages in one UpsertItems or RecordEvents stream; the "
        "rest are rejected by index, so the client knows what to send in a new stream.")
    stream_idle_seconds: float = Field(
        60.0, gt=0.0, description="A client stream that sends nothing for this long is ended "
        "(DEADLINE_EXCEEDED, with what it stored so far), so idle streams do not hold the "
        "server's resources.")
    key_requests_per_second: float = Field(
        200.0, ge=0.0, description="Sustained calls per second one API key may make (a token "
        "bucket of `key_burst`); over it, RESOURCE_EXHAUSTED with the wait. 0: unlimited. "
        "Applies only when auth is on (calls without auth have no key to count).")
    key_burst: int = Field(400, ge=1, description="Calls a key may make at once above its rate.")


class ServiceSettings(BaseModel):
    """The gRPC service's address, threads and telemetry; its client-facing bounds are
    :class:`LimitsSettings` (``limits``)."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    default_top_k: int = Field(10, ge=1)
    workers: int = Field(4, ge=1, description="Threads for encoding and store calls.")
    llm_workers: int = Field(
        1, ge=1, description="Threads for requests that use the LLM (re-rank or written "
        "reasons). They queue apart from `workers`, so slow LLM calls never hold up plain "
        "searches, recommendations, writes or health checks; one is what 2 CPU cores can run.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="HTTP port of the Prometheus metrics (any path, e.g. "
        "/metrics) on `metrics_host`; 0: no metrics endpoint.")
    metrics_host: str = Field(
        "127.0.0.1", description="Address the metrics endpoint binds. It has no auth and "
        "names tenants, so it stays on loopback unless set (0.0.0.0 for a scraper elsewhere).")
    log_format: Literal["text", "json"] = Field(
        "text", description="`mmrec serve` log lines: text (for a terminal; a call's access "
        "line only for server faults) or json (one object a line: ts, level, logger, "
        "message, request_id, rpc, and code and ms on every call's access line).")
    tracing: bool = Field(
        False, description="OpenTelemetry spans per RPC and per stage, through the process's "
        "tracer provider; needs the extra: pip install 'mmrec[tracing]'.")
    grace_seconds: float = Field(5.0, ge=0.0, description="Drain time on SIGTERM.")
    health_probe_seconds: float = Field(
        2.0, ge=0.0, description="How often the service checks that its store answers (one "
        "cheap call, no retries); the gRPC health service says NOT_SERVING while it does not "
        "and SERVING again once it does. 0: no checks (the embedded store always answers).")


    limits: LimitsSettings = LimitsSettings()


LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
"""Host names that mean the loopback interface (besides any loopback IP address)."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens only on this machine: a loopback address (127.0.0.0/8,
    ::1, with or without brackets) or a loopback name. Empty, 0.0.0.0, [::] and every other
    address or name are reachable from outside, so they are not."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AuthSettings(BaseModel):
    """API keys, TLS and mTLS of the gRPC service (see README, Authentication)."""

    enabled: bool | None = Field(
        None, description="Require an API key on every RPC but health and reflection. Unset "
        "(auto): on whenever `service.host` is not loopback, so a service reachable from "
        "other machines never answers without a key unless this is set to false.")
    key_file: Path | None = Field(
        None, description="The hashed API keys `mmrec keys` writes and the service reads "
        "(re-read when it changes); unset: <store.data_dir>/keys.json.")
    tls_cert: Path | None = Field(None, description="PEM server certificate (chain); with "
                                  "`tls_key`, the service listens with TLS only.")
    tls_key: Path | None = Field(None, description="PEM private key of `tls_cert`.")
    client_ca: Path | None = Field(
        None, description="PEM CA certificates; set: every client must present a "
        "certificate they signed (mTLS). Needs `tls_cert` and `tls_key`.")

    @model_validator(mode="after")
    def _tls_complete(self) -> AuthSettings:
        """A certificate without its key (or the reverse), or a client CA without TLS, would
        silently serve in plaintext: refuse the configuration instead."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("auth.tls_cert and auth.tls_key go together: set both or neither")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("auth.client_ca (mTLS) needs auth.tls_cert and auth.tls_key")
        return self


