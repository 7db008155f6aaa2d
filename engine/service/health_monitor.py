"""The store health monitor: the gRPC health status follows whether the store answers.

A service whose Qdrant server is down cannot search, so it should say so to load
balancers and orchestrators (NOT_SERVING) rather than take requests that fail, and
say SERVING again once the server answers, without a restart. Every
``service.health_probe_seconds`` the monitor makes one cheap call, never retried
(``StoreLifecycle.reachable``; an embedded store always answers), on a thread so the
event loop keeps answering, and sets the status of every name it watches when the
answer changes. A probe still running after one interval counts as unreachable
(a server that hangs is as unusable as one that refuses), and no second probe starts
before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StoreHealthMonitor:
    """Probes the store every ``interval`` seconds and flips ``names`` in ``servicer``."""

    def __init__(self, servicer: health.aio.HealthServicer, probe: Callable[[], bool],
                 names: Sequence[str], interval: float) -> None:
        self.servicer = servicer
        self.probe = probe
        self.names = tuple(names)
        self.interval = interval
        self.serving = True
        """What the monitor last reported (the server starts SERVING)."""
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Future[bool] | None = None

    def start(self) -> None:
        """Start probing on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="store-health")

    async def stop(self) -> None:
        """Stop probing (before the server stops); idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> bool:
        """Probe once and report the answer; True when the store answers within an interval."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.to_thread(self._safe_probe))
        try:
            answered = await asyncio.wait_for(asyncio.shield(self._probe), self.interval)
        except TimeoutError:
            answered = False
        await self._report(answered)
        return answered

    def _safe_probe(self) -> bool:
        """The probe; an unexpected error in it means the store is not usable either."""
        try:
            return bool(self.probe())
        except Exception:
            log.exception("the store health probe failed")
            return False

    async def _report(self, answered: bool) -> None:
        """Set every watched name's status when the answer changed, and log the change."""
        if answered == self.serving:
            return
        self.serving = answered
        if answered:
            log.info("the store answers again: health SERVING")
        else:
            log.warning("the store does not answer: health NOT_SERVING until it does")
        for name in self.names:
            await self.servicer.set(name, SERVING if answered else NOT_SERVING)

    async def _watch(self) -> None:
        """Probe, then wait an interval, until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(self.interval)
