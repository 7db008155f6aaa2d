"""The `mmrec` command line: serve, index, search, info, keys, explore and the demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from engine.cli.bench import bench
from engine.cli.explore import explore
from engine.cli.keys import keys_app
from engine.cli.render import print_info, print_results
from engine.config import EngineConfig
from engine.domain import MmrecError
from engine.runtime.logs import configure_logging, quiet_model_loading
from indexers.command import index as index_catalog
from indexers.datasets import DATASETS

app = typer.Typer(help="mmrec: multimodal search and recommendation over gRPC.",
                  no_args_is_help=True, add_completion=False)
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.",
                                                exists=True, dir_okay=False)]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Store directory.")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Service address host:port.",
                                        envvar="MMREC_TARGET")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="MMREC_API_KEY", show_default=False,
    help="API key for a service with auth on (`mmrec keys create`).")]
TlsCaOpt = Annotated[Path | None, typer.Option(
    "--tls-ca", exists=True, dir_okay=False,
    help="PEM certificate(s) to trust for a service with TLS (auth.tls_cert).")]
DEFAULT_TARGET = "127.0.0.1:50051"


def _config(config: Path | None, data_dir: Path | None, **service: Any) -> EngineConfig:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["store"] = {"data_dir": data_dir}
    service = {k: v for k, v in service.items() if v is not None}
    if service:
        overrides["service"] = service
    cfg = EngineConfig.load(config, **overrides)
    configure_logging(cfg.log_level)
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
    from engine.service.logs import configure_service_logging

    cfg = _config(config, data_dir, port=port, host=host)
    configure_service_logging(cfg.log_level, cfg.service.log_format)  # json: one object a line
    quiet_model_loading()
    run_server(cfg)


app.command("index")(index_catalog)
app.add_typer(keys_app, name="keys")
app.command("bench")(bench)
app.command("explore")(explore)


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
    """Train the behaviour channels, choose the recommend fusion on validation, store vectors."""
    from dataclasses import replace

    from engine.behaviour.sequential import SequentialSettings
    from engine.domain import DEFAULT_TENANT
    from indexers.behaviour import train_behaviour

    cfg = _config(config, data_dir)
    quiet_model_loading()
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
    if summary.fusion is not None:
        console.print(f"fusion chosen on validation: {summary.fusion.summary()}",
                      highlight=False, markup=False)
    else:
        console.print(f"fusion not tuned ({summary.fusion_note}): the recommend section's "
                      f"settings apply", highlight=False, markup=False)


@app.command("train-rerank")
def train_rerank(
    log: Annotated[Path | None, typer.Argument(
        help="Interaction log (as for train-seq). Default: the events recorded in the store.",
        exists=True, dir_okay=False)] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    tenant: Annotated[str, typer.Option(help="Tenant whose items and events are used.")] = "",
    steps: Annotated[int | None, typer.Option(
        min=1, help="Most training steps (one example each). Default: the library's.")] = None,
    shadow_epochs: Annotated[int | None, typer.Option(
        min=0, help="SASRec epochs of the shadow first stage (0: none; default: the served "
        "model's epoch count).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train the listwise LLM re-ranker on the interactions (run after train-seq)."""
    from dataclasses import replace

    from engine.domain import DEFAULT_TENANT
    from engine.rerank.training import TrainSettings
    from indexers.rerank import train_reranker

    cfg = _config(config, data_dir)
    quiet_model_loading()
    settings = TrainSettings(seed=seed)
    if steps is not None:
        settings = replace(settings, max_examples=steps)
    try:
        summary = train_reranker(cfg, log, tenant=tenant or DEFAULT_TENANT, settings=settings,
                                 shadow_epochs=shadow_epochs, progress=progress)
    except MmrecError as exc:
        _fail(exc)
    a = summary.artifact
    v, t = a.validation, a.training
    weight = (f"{a.blend.weight:g}" if a.blend.weight else
              "0: the LLM did not beat the first stage on validation, so Recommend keeps the "
              "first stage's order")
    console.print(
        f"trained on {summary.train_examples:,} cut points of {summary.users:,} users from "
        f"{summary.source} in {t['seconds']:.0f} s ({t['steps']} steps, "
        f"{t['examples_per_second']:.2f} examples/s); validation NDCG@10 on "
        f"{summary.valid_examples:,} users: first stage {v['first_stage']:.4f}, LLM alone "
        f"{v['llm']:.4f}, blended {v['blended']:.4f} (x{v['gain']:.3f}); blend weight {weight}; "
        f"position bias: top-1 agreement {t['position_bias']['top1_agreement']:.2f} between a "
        f"list and its reverse; saved to {summary.path}")


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
    api_key: ApiKeyOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Search a running service by text, image or both and print the results."""
    from engine.client import MmrecClient

    if not text and image is None:
        raise typer.BadParameter("give a TEXT query, --image PATH, or both")
    with MmrecClient(target, api_key=api_key, root_certificates=tls_ca) as client:
        try:
            result = client.search(text=text, image=image, top_k=top_k, tenant=tenant,
                                   explain=explain, explain_reason=reason, rerank=rerank,
                                   budget_ms=budget_ms)
        except MmrecError as exc:
            _fail(exc)
    label = " + ".join(filter(None, [repr(text) if text else "", str(image) if image else ""]))
    print_results(console, label, result)


@app.command()
def info(target: TargetOpt = DEFAULT_TARGET, api_key: ApiKeyOpt = None,
         tls_ca: TlsCaOpt = None) -> None:
    """Show a running service's models, channels and item count."""
    from engine.client import MmrecClient

    with MmrecClient(target, api_key=api_key, root_certificates=tls_ca) as client:
        try:
            details = client.info()
        except MmrecError as exc:
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
    explore: Annotated[bool, typer.Option(
        "--explore/--no-explore",
        help="After the queries, serve the explorer page and keep both running until "
        "Ctrl-C; --no-explore stops the service and exits.")] = True,
    explore_port: Annotated[int, typer.Option(help="Loopback port of the explorer page.")] = (
        8765),
) -> None:
    """Index MovieLens-100k films and Tux Paint stamps, serve them, query over gRPC, and open
    the explorer web page."""
    from engine.cli.demo import run_demo

    cfg = _config(config, data_dir)
    quiet_model_loading()
    sys.exit(run_demo(cfg, datasets=datasets, port=port, config_file=config,
                      explore_port=explore_port if explore else None))


def _fail(exc: MmrecError) -> None:
    """Print what the service (or the client) refused, with the gRPC status name, and exit 2."""
    console.print(f"[red]{exc.status or type(exc).__name__}[/]: {exc}")
    raise typer.Exit(2)


def main() -> None:
    """Entry point for ``python -m engine``."""
    app()
