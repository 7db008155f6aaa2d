"""Admission control: a lane runs at most ``workers + max_queued`` calls and refuses the rest.

Real threads and a real event loop; the "slow" work is a thread waiting on an
Event the test sets, so the test controls exactly when each call ends.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine.domain import Overloaded
from engine.service.lanes import Lane


def test_a_full_lane_refuses_at_once_and_admits_again_when_work_ends() -> None:
    async def scenario() -> None:
        lane = Lane("LLM", workers=1, max_queued=1)
        release = threading.Event()
        first = asyncio.ensure_future(lane.run(release.wait, 10, timeout=10))
        second = asyncio.ensure_future(lane.run(lambda: "queued", timeout=10))
        await asyncio.sleep(0.05)
        assert lane.unfinished == 2
        with pytest.raises(Overloaded, match="2 LLM requests are running or queued"):
            await lane.run(lambda: "refused", timeout=10)
        release.set()
        assert await first is True and await second == "queued"
        await asyncio.sleep(0.01)  # the done callbacks run on the loop
        assert lane.unfinished == 0
        assert await lane.run(lambda: "admitted", timeout=10) == "admitted"
        lane.close()

    asyncio.run(scenario())


def test_a_timed_out_call_counts_until_its_thread_is_done() -> None:
    async def scenario() -> None:
        lane = Lane("plain", workers=1, max_queued=0)
        release = threading.Event()
        with pytest.raises(TimeoutError):
            await lane.run(release.wait, 10, timeout=0.05)
        assert lane.unfinished == 1  # the thread still works: a new call would wait behind it
        with pytest.raises(Overloaded):
            await lane.run(lambda: None, timeout=1)
        release.set()
        await asyncio.sleep(0.05)
        assert lane.unfinished == 0
        lane.close()

    asyncio.run(scenario())
