"""The `mmrec` command line: serve, index, search, info and the demo."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.console import Console
from rich.logging import RichHandler

from engine.cli.render import print_info, print_results, print_summary
from engine.config import EngineConfig
from indexers.datasets import DATASETS

app = typer.Typer(help="mmrec: multimodal search and recommendation over gRPC.",
                  no_args_is_help=True, add_completion=False)
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.",
                                                exists=True, dir_okay=False)]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Store directory.")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Service address host:port.",
                                        envvar="MMREC_TARGET")]
DEFAULT_TARGET = "127.0.0.1:50051"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])
    for noisy in ("httpx", "huggingface_hub", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_model_loading() -> None:
    """Per-load weight progress bars from transformers add noise to our own progress output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _config(config: Path | None, data_dir: Path | None, **service: Any) -> EngineConfig:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["store"] = {"data_dir": data_dir}
    service = {k: v for k, v in service.items() if v is not None}
    if service:
        overrides["service"] = service
    cfg = EngineConfig.load(config, **overrides)
    _setup_logging(cfg.log_level)
    return cfg


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
) -> None:
    """Serve the gRPC API (health and reflection included) until SIGTERM or Ctrl-C."""
    from engine.service import serve as run_server

    cfg = _config(config, data_dir, port=port, host=host)
    _quiet_model_loading()
    run_server(cfg)


@app.command()
def index(
    source: Annotated[Path, typer.Argument(
        help="Catalog: JSONL, CSV/TSV, Parquet, or a folder of images with sidecar captions.",
        exists=True)],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
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
    from indexers.fetch import FetchOptions
    from indexers.job import run_index_job
    from indexers.pipeline import JobOptions

    cfg = _config(config, data_dir)
    cfg.clip.batch_size = cfg.text_encoder.batch_size = batch_size
    if device is not None:
        cfg.device = device
    _quiet_model_loading()
    summary = run_index_job(
        cfg, source, service=service, source_format=source_format,
        options=JobOptions(batch_size=batch_size, workers=workers, restart=restart,
                           checkpoint_seconds=checkpoint_seconds, progress=progress),
        fetch=FetchOptions(allow_http=allow_http, timeout=http_timeout, retries=http_retries),
        dead_letter=dead_letter, checkpoint_dir=checkpoint_dir)
    print_summary(console, summary)


@app.command("train-seq")
def train_seq(
    log: Annotated[Path | None, typer.Argument(
        help="Interaction log (CSV/TSV/JSONL or RecBole .inter: user_id, item_id, timestamp, "
        "optional kind and value). Default: the events recorded in the store.",
        exists=True, dir_okay=False)] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    tenant: Annotated[str, typer.Option(help="Tenant whose items get behaviour vectors.")] = "",
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Most epochs (early stopping). Default: the library's.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    refit: Annotated[bool, typer.Option(
        help="After early stopping, train again on every event for the best epoch count "
        "(twice the time; the model learns each user's latest step).")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train the behavioural channel (SASRec) and store every item's behaviour vector."""
    from dataclasses import replace

    from engine.behaviour.sequential import SequentialSettings
    from engine.domain import DEFAULT_TENANT
    from indexers.behaviour import train_behaviour

    cfg = _config(config, data_dir)
    _quiet_model_loading()
    settings = SequentialSettings(seed=seed)
    if epochs is not None:
        settings = replace(settings, epochs=epochs)
    summary = train_behaviour(cfg, log, tenant=tenant or DEFAULT_TENANT, settings=settings,
                              refit=refit, progress=progress)
    valid = ("n/a" if summary.best_valid_ndcg is None
             else f"{summary.best_valid_ndcg:.4f}")
    console.print(
        f"trained on {summary.users:,} users / {summary.interactions:,} interactions from "
        f"{summary.source} in {summary.train_seconds:.0f} s ({summary.epochs_run} epochs"
        + (f", then {summary.refit_epochs} on every event" if summary.refit_epochs else "")
        + "); "
        f"held-out next-item NDCG@10 {valid}; {summary.vectors_written:,} of "
        f"{summary.items_in_model:,} items got behaviour vectors; model saved to "
        f"{summary.model_path}" + (f"; {summary.skipped_rows} rows skipped"
                                   if summary.skipped_rows else ""))


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="Text query.")] = "",
    image: Annotated[Path | None, typer.Option(help="Image file to search with.", exists=True,
                                               dir_okay=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=0)] = 10,
    tenant: Annotated[str, typer.Option(help="Tenant to search.")] = "",
    explain: Annotated[bool, typer.Option(help="Say why each result is there.")] = False,
    reason: Annotated[bool, typer.Option(help="With --explain: an LLM sentence too.")] = False,
    rerank: Annotated[bool | None, typer.Option(
        "--rerank/--no-rerank", help="LLM re-ranking; default: the server's setting.")] = None,
    budget_ms: Annotated[int, typer.Option(min=0, help="Re-rank budget; 0: server default.")] = 0,
    target: TargetOpt = DEFAULT_TARGET,
) -> None:
    """Search a running service by text, image or both and print the results."""
    from engine.client import MmrecClient

    if not text and image is None:
        raise typer.BadParameter("give a TEXT query, --image PATH, or both")
    with MmrecClient(target) as client:
        try:
            result = client.search(text=text, image=image, top_k=top_k, tenant=tenant,
                                   explain=explain, explain_reason=reason, rerank=rerank,
                                   budget_ms=budget_ms)
        except grpc.RpcError as exc:
            _fail(exc)
    label = " + ".join(filter(None, [repr(text) if text else "", str(image) if image else ""]))
    print_results(console, label, result)


@app.command()
def info(target: TargetOpt = DEFAULT_TARGET) -> None:
    """Show a running service's models, channels and item count."""
    from engine.client import MmrecClient

    with MmrecClient(target) as client:
        try:
            details = client.info()
        except grpc.RpcError as exc:
            _fail(exc)
    print_info(console, details)


@app.command()
def demo(
    datasets: Annotated[Path, typer.Option(help="Where `make data` unpacked the data sets.")] = (
        DATASETS),
    data_dir: Annotated[Path, typer.Option(help="Store directory for the demo.")] = (
        Path(".mmrec/demo")),
    port: Annotated[int, typer.Option(help="Loopback port for the demo service.")] = 50071,
    config: ConfigOpt = None,
) -> None:
    """Index MovieLens-100k films and Tux Paint stamps, serve them, and query over gRPC."""
    from engine.cli.demo import run_demo

    cfg = _config(config, data_dir)
    _quiet_model_loading()
    sys.exit(run_demo(cfg, datasets=datasets, port=port, config_file=config))


def _fail(exc: grpc.RpcError) -> None:
    code = exc.code().name if hasattr(exc, "code") else "ERROR"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    console.print(f"[red]{code}[/]: {details}")
    raise typer.Exit(2)


def main() -> None:
    """Entry point for ``python -m engine``."""
    app()
