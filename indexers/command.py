"""The bulk indexing job's command line, defined once: `python -m indexers` and `mmrec index`.

``engine.cli`` registers :func:`index` as its ``index`` command; ``python -m
indexers`` runs it alone, without the rest of the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from engine.config import EngineConfig
from engine.runtime.logs import configure_logging, quiet_model_loading
from indexers.fetch import FetchOptions
from indexers.job import run_index_job
from indexers.pipeline import JobOptions, JobSummary

console = Console()


def index(
    source: Annotated[Path, typer.Argument(
        help="Catalog: JSONL, CSV/TSV, Parquet, or a folder of images with sidecar captions.",
        exists=True)],
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="TOML config file.", exists=True, dir_okay=False)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Store directory.")] = None,
    service: Annotated[str | None, typer.Option(
        help="Write through a running service (host:port) instead of the data dir.")] = None,
    source_format: Annotated[str | None, typer.Option(
        "--format", help="jsonl, csv, parquet or folder; default: from the name.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per encoder batch.")] = 64,
    workers: Annotated[int, typer.Option(min=1, help="Image fetch/decode threads.")] = 2,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    checkpoint_seconds: Annotated[float, typer.Option(
        min=0, help="Longest time between checkpoints.")] = 5.0,
    restart: Annotated[bool, typer.Option(help="Ignore the checkpoint; index all again.")] = False,
    allow_http: Annotated[bool, typer.Option(help="Fetch http(s) image URLs.")] = False,
    http_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per attempt.")] = 10.0,
    http_retries: Annotated[int, typer.Option(min=0, help="Extra attempts per image.")] = 2,
    dead_letter: Annotated[Path | None, typer.Option(
        help="Where skipped rows go (JSONL); default: next to the checkpoint.")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(
        help="Where checkpoints go; default: DATA_DIR/jobs.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Index a catalog: bad rows are dead-lettered, re-runs change nothing, kills resume."""
    overrides = {"store": {"data_dir": data_dir}} if data_dir is not None else {}
    cfg = EngineConfig.load(config, **overrides)
    configure_logging(cfg.log_level)
    cfg.clip.batch_size = cfg.text_encoder.batch_size = batch_size
    if device is not None:
        cfg.device = device
    quiet_model_loading()
    summary = run_index_job(
        cfg, source, service=service, source_format=source_format,
        options=JobOptions(batch_size=batch_size, workers=workers, restart=restart,
                           checkpoint_seconds=checkpoint_seconds, progress=progress),
        fetch=FetchOptions(allow_http=allow_http, timeout=http_timeout, retries=http_retries),
        dead_letter=dead_letter, checkpoint_dir=checkpoint_dir)
    print_summary(console, summary)


def print_summary(out: Console, summary: JobSummary) -> None:
    """The end-of-job report: counts, time, and items/s per stage."""
    if summary.already_done:
        out.print(f"already indexed: nothing to do (store holds {summary.store_count} items; "
                  "--restart indexes again)")
        return
    resumed = f" (resumed after row {summary.resumed_from})" if summary.resumed_from else ""
    out.print(f"[bold]indexed[/] {summary.indexed} items, [bold]failed[/] {summary.failed} rows"
              f"{resumed}; this run {summary.seconds:.1f} s, {summary.items_per_second:.1f} rows/s"
              f", index build {summary.finish_seconds:.1f} s. Store holds "
              f"{summary.store_count} items.")
    rates = summary.stage_rates()
    out.print("  stages (items per busy second): " + ", ".join(
        f"{stage} {rates[stage]:.0f}/s ({summary.stage_seconds[stage]:.1f} s)"
        for stage in rates))
    if summary.failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.reasons.items()))
        out.print(f"  failed rows ({reasons}) are listed in {summary.dead_letter}")


def main() -> None:
    """``python -m indexers CATALOG [options]``."""
    typer.run(index)
