"""What the soak's raw samples say: per-RPC latency and outcomes, and the RSS trend.

**RSS growth rule.** After the warm-up, fit RSS (MiB) = a + b * minutes by least
squares over the 1 s samples. The samples are autocorrelated, so the slope's standard
error is the OLS one inflated by the AR(1) factor sqrt((1 + r) / (1 - r)), r the lag-1
autocorrelation of the residuals (clipped to [0, 0.95]). Growth is *suggested* when
both hold: the fitted rise over the fitted window, b * window, exceeds
:data:`GROWTH_MIB`, and b > 2 SE. Either alone is noise: a tiny but steady slope over a
long run, or a large slope from one step (an index build, the allocator settling).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.soak.load import SHED, Call

GROWTH_MIB = 16.0
"""Fitted rise over the fitted window above which growth may be suggested."""


def warmup_seconds(seconds: float) -> float:
    """The warm-up left out of the RSS fit: a quarter of the run, at most 60 s."""
    return min(60.0, seconds / 4)


@dataclass(frozen=True)
class RpcSummary:
    """One RPC's requests, outcomes and client-side latency (answered calls only)."""

    rpc: str
    requests: int
    ok: int
    shed: int
    errors: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    per_s: float


def summarise_calls(calls: list[Call], rpcs: list[str], wall_s: float) -> list[RpcSummary]:
    """Per RPC: counts by outcome and the p50/p95/p99 of the calls that answered OK."""
    out = []
    for rpc in rpcs:
        mine = [c for c in calls if c.rpc == rpc]
        codes = Counter(c.code for c in mine)
        ok_ms = np.array([c.ms for c in mine if c.code == "OK"])
        p50, p95, p99 = (np.percentile(ok_ms, [50, 95, 99]).tolist() if ok_ms.size
                         else [math.nan] * 3)
        errors = {k: v for k, v in sorted(codes.items()) if k not in ("OK", SHED)}
        out.append(RpcSummary(rpc, len(mine), codes["OK"], codes[SHED], errors, p50, p95, p99,
                              len(mine) / wall_s if wall_s else 0.0))
    return out


@dataclass(frozen=True)
class RssTrend:
    """The fitted RSS line after the warm-up, and what it suggests."""

    warmup_s: float
    window_min: float
    samples: int
    intercept_mib: float
    slope_mib_per_min: float
    slope_se: float
    lag1_r: float
    rise_mib: float
    growth_suspected: bool
    start_mib: float
    end_mib: float
    peak_mib: float

    def as_dict(self) -> dict[str, Any]:
        """The trend as JSON-ready values."""
        return {k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in self.__dict__.items()}


def fit_rss(times_s: list[float], rss: list[float], warmup_s: float) -> RssTrend:
    """Fit the line after ``warmup_s`` and apply the growth rule (module docstring)."""
    t = np.asarray(times_s, dtype=float)
    y = np.asarray(rss, dtype=float)
    keep = t >= warmup_s
    tk, yk = t[keep] / 60.0, y[keep]
    if tk.size < 3 or np.ptp(tk) == 0:
        raise ValueError(f"too few RSS samples after the {warmup_s:.0f} s warm-up: {tk.size}")
    slope, intercept = np.polyfit(tk, yk, 1)
    resid = yk - (intercept + slope * tk)
    se_ols = math.sqrt(float(resid @ resid) / (tk.size - 2) / float(((tk - tk.mean()) ** 2).sum()))
    r = 0.0
    if resid.std() > 0:
        r = float(np.clip(np.nan_to_num(np.corrcoef(resid[:-1], resid[1:])[0, 1]), 0.0, 0.95))
    se = se_ols * math.sqrt((1 + r) / (1 - r))
    window = float(np.ptp(tk))
    rise = float(slope) * window
    return RssTrend(warmup_s, window, int(tk.size), float(intercept), float(slope), se, r, rise,
                    bool(rise > GROWTH_MIB and slope > 2 * se), float(yk[0]), float(yk[-1]),
                    float(y.max()))


def throughput_series(calls: list[Call], seconds: float, bucket_s: float = 10.0) -> list[float]:
    """Answered requests per second in each whole ``bucket_s`` window of the first
    ``seconds`` (the calls that end while the streams drain are left out)."""
    counts = np.zeros(max(1, int(seconds // bucket_s)))
    for call in calls:
        bucket = int(call.end_s // bucket_s)
        if call.code == "OK" and bucket < counts.size:
            counts[bucket] += 1
    return (counts / bucket_s).tolist()


def build_spans(times_s: list[float], children: list[int]) -> list[list[float]]:
    """[first, last] second of each run of samples in which the server had a child process
    (a background index build optimizing its copy of the shard)."""
    spans: list[list[float]] = []
    running = False
    for t, count in zip(times_s, children, strict=True):
        if count and running:
            spans[-1][1] = round(t, 1)
        elif count:
            spans.append([round(t, 1), round(t, 1)])
        running = bool(count)
    return spans
