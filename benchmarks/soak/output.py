"""The soak's results: JSON and Markdown through ``benchmarks.report``, and a PNG plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.report import Provenance, markdown_table, write
from benchmarks.soak.stats import GROWTH_MIB, RpcSummary, RssTrend

NAME = "soak"


def save(out: Path, data: dict[str, Any], markdown: str, *, provenance: Provenance
         ) -> tuple[Path, Path]:
    """``soak.json`` and ``soak.md`` in ``out``, stamped by ``report.write`` (the machine,
    ``provenance`` and the commit)."""
    return write(NAME, data, markdown, provenance=provenance, out=out)


def markdown(data: dict[str, Any], rpcs: list[RpcSummary], trend: RssTrend) -> str:
    """The report people read: what ran, on what data, the per-RPC table, the RSS trend."""
    run, setup = data["run"], data["setup"]
    rows = [[r.rpc, r.requests, r.ok, r.shed, sum(r.errors.values()),
             ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "-",
             _ms(r.p50_ms), _ms(r.p95_ms), _ms(r.p99_ms), round(r.per_s, 2)] for r in rpcs]
    table = markdown_table(["RPC", "requests", "OK", "shed", "errors", "error codes",
                            "p50 ms", "p95 ms", "p99 ms", "req/s"], rows)
    verdict = "**growth suggested**" if trend.growth_suspected else "no growth suggested"
    return (
        f"# Soak: {run['seconds']:.0f} s at {run['concurrency']} concurrent streams\n\n"
        f"`mmrec serve` (CLIP off, re-ranking {run['rerank']}, text encoder "
        f"{run['text_model']}) on loopback; a separate client process mixed "
        f"{_mix(run['mix'])} in closed loop over {data['data']['items']:,} MovieLens-100k "
        f"films and {data['data']['users']:,} users. Setup: server ready in "
        f"{setup['ready_s']:.1f} s, films indexed over UpsertItems in "
        f"{setup['index_s']:.1f} s, {setup['events']:,} seed ratings in "
        f"{setup['events_s']:.1f} s.\n\n{table}\n\n"
        f"Total {data['totals']['requests']:,} requests ({data['totals']['per_s']:.1f}/s), "
        f"{data['totals']['errors']} errors, {data['totals']['shed']} shed "
        f"(RESOURCE_EXHAUSTED). Latency is client-side, of answered calls. The load "
        f"recorded {data['totals']['events_recorded']:,} more events (user histories grow, "
        f"{data['run']['max_events']} kept per user) and replaced "
        f"{data['totals']['items_upserted']:,} film versions (the catalog does not grow).\n\n"
        f"**Server RSS** (VmRSS of the server process, 1 s samples): "
        f"{trend.start_mib:.0f} MiB after the {trend.warmup_s:.0f} s warm-up, "
        f"{trend.end_mib:.0f} MiB at the end, peak {trend.peak_mib:.0f} MiB; fitted slope "
        f"{trend.slope_mib_per_min:+.2f} ± {trend.slope_se:.2f} MiB/min (SE, AR(1)-corrected, "
        f"r = {trend.lag1_r:.2f}) over {trend.window_min:.1f} min, a fitted rise of "
        f"{trend.rise_mib:+.1f} MiB: {verdict} (rule: rise > {GROWTH_MIB:.0f} MiB and slope "
        f"> 2 SE). Background index builds (a child process of the server) ran "
        f"{_spans(data['rss']['index_builds'])}; the server's peak RSS (VmHWM) was "
        f"{_hwm(data['rss']['hwm_mib'])}.\n")


def _spans(spans: list[list[float]]) -> str:
    if not spans:
        return "never during the load"
    return f"{len(spans)} time(s), at " + ", ".join(f"{a:.0f}-{b:.0f} s" for a, b in spans)


def _hwm(value: float | None) -> str:
    return "not read" if value is None else f"{value:.0f} MiB"


def _ms(value: float) -> float | str:
    return "-" if math.isnan(value) else round(value, 1)


def _mix(mix: dict[str, float]) -> str:
    return ", ".join(f"{rpc} {share:.0%}" for rpc, share in mix.items())


def plot(path: Path, rss_t: list[float], rss: list[float], trend: RssTrend,
         rpcs: list[RpcSummary], throughput: list[float], builds: list[list[float]]) -> None:
    """RSS over time with the fitted line and the index builds shaded; latency percentiles
    per RPC; throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_lat, ax_tp) = plt.subplots(1, 3, figsize=(15, 4))
    minutes = [t / 60 for t in rss_t]
    ax_rss.plot(minutes, rss, lw=1, label="server VmRSS")
    fit_x = [trend.warmup_s / 60, minutes[-1]]
    ax_rss.plot(fit_x, [trend.intercept_mib + trend.slope_mib_per_min * x for x in fit_x],
                "r--", label=f"fit {trend.slope_mib_per_min:+.2f} MiB/min")
    for i, (start, end) in enumerate(builds):
        ax_rss.axvspan(start / 60, end / 60, color="orange", alpha=0.25,
                       label="index build (child running)" if i == 0 else None)
    ax_rss.axvline(trend.warmup_s / 60, color="grey", lw=0.8, ls=":", label="end of warm-up")
    ax_rss.set(xlabel="minutes", ylabel="MiB", title="Server RSS")
    ax_rss.legend(fontsize=8)
    width = 0.25
    for i, (label, attr) in enumerate((("p50", "p50_ms"), ("p95", "p95_ms"),
                                       ("p99", "p99_ms"))):
        ax_lat.bar([j + (i - 1) * width for j in range(len(rpcs))],
                   [getattr(r, attr) for r in rpcs], width, label=label)
    ax_lat.set_xticks(range(len(rpcs)), [r.rpc for r in rpcs], fontsize=8)
    ax_lat.set(ylabel="ms (client side)", title="Latency per RPC")
    ax_lat.legend(fontsize=8)
    ax_tp.plot([10 * (i + 0.5) / 60 for i in range(len(throughput))], throughput, marker=".")
    ax_tp.set(xlabel="minutes", ylabel="answered requests / s", title="Throughput (10 s)",
              ylim=(0, None))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
