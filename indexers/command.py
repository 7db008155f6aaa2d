"""The bulk indexing job's command line, defined once: `python -m indexers` and `mmrec index`.

``engine.cli`` registers :func:`index` as its ``index`` command; ``python -m
indexers`` runs it alone, without the rest of the command line.

Exit status: 0 when the job ran and few enough rows failed; 1 when every row failed
or more than ``--max-failed`` of them did (the good rows are still stored); 2 when
the job could not run (an unreadable catalog, a bad option, the store or service
refusing), said in one line on stderr.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from engine.config import EngineConfig
from engine.domain import MmrecError
from engine.runtime.logs import configure_logging, quiet_model_loading
from indexers.fetch import FetchOptions
from indexers.job import run_index_job
from indexers.pipeline import JobOptions, JobSummary
from indexers.ray_job import RayOptions
from indexers.sources import MAX_ROW_BYTES
from indexers.sources.cells import COLUMN_TYPES

log = logging.getLogger(__name__)
console = Console()
errors = Console(stderr=True)
MAX_FAILED = 0.1
"""Default ``--max-failed``: a few bad rows are the dead-letter file's business; more than
one in ten usually means a wrong column name, image folder or format."""


def index(
    source: Annotated[Path, typer.Argument(
        help="Catalog: JSONL, CSV/TSV, Parquet, or a folder of images with sidecar captions.",
        exists=True)],
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="TOML config file.", exists=True, dir_okay=False)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Store directory.")] = None,
    service: Annotated[str | None, typer.Option(
        help="Write through a running service (host:port) instead of the data dir.")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="MMREC_API_KEY", show_default=False,
        help="With --service: a write key for the items' tenants (auth on).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        "--tls-ca", exists=True, dir_okay=False,
        help="With --service: PEM certificate(s) to trust (TLS).")] = None,
    source_format: Annotated[str | None, typer.Option(
        "--format", help="jsonl, csv, parquet or folder; default: from the name.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per encoder batch.")] = 64,
    workers: Annotated[int, typer.Option(
        min=1, help="Image fetch/decode threads; with --ray, indexing actors (one CPU "
        "each).")] = 2,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Run on Ray Data: read -> prepare/encode/write in --workers actors "
        "in parallel. Needs --service or a Qdrant server (store.url); installs with "
        "pip install 'mmrec[ray]'.")] = False,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="With --ray: a Ray cluster to join (auto, HOST:PORT, "
        "ray://HOST:10001); default: a local Ray with --workers CPUs.")] = None,
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
    allow_outside_paths: Annotated[bool, typer.Option(
        help="Read local images (and a folder's captions) outside the catalog's folder: "
        "absolute paths elsewhere, '..', symlinks that lead out. Off: such rows are "
        "dead-lettered and nothing outside is opened.")] = False,
    max_image_bytes: Annotated[int | None, typer.Option(
        min=1, help="Largest image file or download, checked before reading; default: "
        "the config's service.limits.max_image_bytes (20 MiB).")] = None,
    max_row_bytes: Annotated[int, typer.Option(
        min=1, help="Largest catalog row; a longer one is dead-lettered without being "
        "parsed.")] = MAX_ROW_BYTES,
    max_failed: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Exit with status 1 when more than this fraction of the rows "
        "failed (0: any failure). A run in which every row failed exits 1 whatever the "
        "value. The default, 0.1: more than one bad row in ten usually means a wrong "
        "column, folder or format.")] = MAX_FAILED,
    column_type: Annotated[list[str] | None, typer.Option(
        help="NAME=TYPE: force a CSV column's type (int, float, bool, str), repeatable. "
        "Default: inferred per column (ints, floats, booleans, else text; ids stay "
        "text).")] = None,
) -> None:
    """Index a catalog: bad rows are dead-lettered, re-runs change nothing, kills resume.

    Exit status 1 when every row failed or more than --max-failed of them; 2 when the
    job could not run.
    """
    schema = _schema(column_type or [])
    overrides = {"store": {"data_dir": data_dir}} if data_dir is not None else {}
    cfg = EngineConfig.load(config, **overrides)
    configure_logging(cfg.log_level)
    cfg.clip.batch_size = cfg.text_encoder.batch_size = batch_size
    if device is not None:
        cfg.device = device
    quiet_model_loading()
    fetch = FetchOptions(allow_http=allow_http, timeout=http_timeout, retries=http_retries,
                         allow_outside_paths=allow_outside_paths,
                         max_bytes=max_image_bytes or cfg.service.limits.max_image_bytes)
    try:
        summary = run_index_job(
            cfg, source, service=service, source_format=source_format, fetch=fetch,
            options=JobOptions(batch_size=batch_size, workers=workers, restart=restart,
                               checkpoint_seconds=checkpoint_seconds, progress=progress),
            dead_letter=dead_letter, checkpoint_dir=checkpoint_dir,
            max_row_bytes=max_row_bytes, schema=schema, api_key=api_key, tls_ca=tls_ca,
            ray=RayOptions(workers=workers, address=ray_address) if ray else None)
    except (MmrecError, OSError) as exc:
        log.debug("the index job failed", exc_info=True)
        errors.print(f"[red]error[/]: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    print_summary(console, summary)
    verdict = failure_verdict(summary, max_failed)
    if verdict:
        errors.print(f"[red]failed[/]: {escape(verdict)}", soft_wrap=True)
        raise typer.Exit(1)


def _schema(items: list[str]) -> dict[str, str]:
    """``--column-type NAME=TYPE`` options as a schema."""
    schema: dict[str, str] = {}
    for item in items:
        name, sep, kind = item.partition("=")
        if not sep or not name.strip() or kind.strip() not in COLUMN_TYPES:
            raise typer.BadParameter(f"{item!r} is not NAME=TYPE with TYPE one of "
                                     f"{', '.join(COLUMN_TYPES)}", param_hint="--column-type")
        schema[name.strip()] = kind.strip()
    return schema


def failure_verdict(summary: JobSummary, max_failed: float) -> str:
    """Why the job counts as failed (every row failed, or more than ``max_failed`` of them),
    in one line; "" when it does not. Counts cover the whole job, resumed runs included."""
    handled = summary.indexed + summary.failed
    if summary.already_done or not summary.failed:
        return ""
    where = f"; the rows and reasons are in {summary.dead_letter}"
    if not summary.indexed:
        return f"every row failed ({summary.failed:,} of {handled:,}), nothing was indexed{where}"
    share = summary.failed / handled
    if share > max_failed:
        return (f"{share:.1%} of the rows failed ({summary.failed:,} of {handled:,}), more than "
                f"--max-failed {max_failed:g}{where}")
    return ""


def print_summary(out: Console, summary: JobSummary) -> None:
    """The end-of-job report: counts, time, and items/s per stage."""
    if summary.already_done:
        out.print(f"already indexed: nothing to do (store holds {summary.store_count} items; "
                  "--restart indexes again)")
        return
    resumed = f" (resumed after row {summary.resumed_from})" if summary.resumed_from else ""
    on_ray = (f" on Ray Data, {summary.ray_workers} workers (first batch back after "
              f"{summary.startup_seconds:.1f} s)") if summary.ray_workers else ""
    out.print(f"[bold]indexed[/] {summary.indexed} items, [bold]failed[/] {summary.failed} rows"
              f"{resumed}; this run {summary.seconds:.1f} s{on_ray}, "
              f"{summary.items_per_second:.1f} rows/s, index build "
              f"{summary.finish_seconds:.1f} s. Store holds {summary.store_count} items.")
    rates = summary.stage_rates()
    summed = ", summed over the workers" if summary.ray_workers else ""
    out.print(f"  stages (items per busy second{summed}): " + ", ".join(
        f"{stage} {rates[stage]:.0f}/s ({summary.stage_seconds[stage]:.1f} s)"
        for stage in rates))
    if summary.failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.reasons.items()))
        out.print(f"  failed rows ({reasons}) are listed in {summary.dead_letter}")


def main() -> None:
    """``python -m indexers CATALOG [options]``."""
    typer.run(index)
