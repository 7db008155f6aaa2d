"""`mmrec keys`: create, list and revoke the API keys of a service's data dir.

The key file (``DATA_DIR/keys.json``, or ``auth.key_file``) holds only salted hashes; a
running service re-reads it when it changes, so these commands take effect at the next call.
Output is plain lines (no wrapping, no markup) so scripts can read it: ``create`` prints
the new key alone on its last line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.config import EngineConfig
from engine.domain import MmrecError
from engine.service.keys import KeyFile, Role

keys_app = typer.Typer(help="Create, list and revoke API keys (stored hashed in the data dir).",
                       no_args_is_help=True, add_completion=False)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.",
                                                exists=True, dir_okay=False)]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="The service's data dir; the keys live in DATA_DIR/keys.json.")]


def key_file(config: Path | None, data_dir: Path | None) -> KeyFile:
    """The key file the service with this config and data dir reads."""
    overrides = {"store": {"data_dir": data_dir}} if data_dir is not None else {}
    return KeyFile(EngineConfig.load(config, **overrides).key_path())


def _fail(exc: MmrecError) -> None:
    """Print why the command could not run, on stderr, and exit 2."""
    typer.echo(f"{type(exc).__name__}: {exc}", err=True)
    raise typer.Exit(2)


@keys_app.command()
def create(
    tenant: Annotated[list[str], typer.Option(
        "--tenant", help="Tenant the key may use (repeat for several; 'default' is the "
        "tenant of requests that name none).")],
    role: Annotated[Role, typer.Option(
        help="read: Search, GetItems, Recommend, GetInfo; write: also UpsertItems, "
        "DeleteItems, RecordEvents, DeleteUser; admin: everything.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make a key; its id and grants come first, the key itself alone on the last line."""
    keys = key_file(config, data_dir)
    try:
        entry, token = keys.create(tenant, role)
    except MmrecError as exc:
        _fail(exc)
    p = entry.principal
    typer.echo(f"created key {p.key_id}: role {p.role.value}, tenant(s) {p.tenant_list()}, "
               f"in {keys.path}")
    typer.echo("the key is shown once, below; only its hash is kept")
    typer.echo(token)


@keys_app.command("list")
def list_keys(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Every key's id, role, tenants and creation time (never the key)."""
    keys = key_file(config, data_dir)
    entries = keys.keys()
    if keys.error:
        typer.echo(keys.error, err=True)
        raise typer.Exit(2)
    if not entries:
        typer.echo(f"no API keys in {keys.path}")
        return
    typer.echo(f"{'id':<10} {'role':<6} {'created':<21} tenants")
    for entry in entries:
        p = entry.principal
        typer.echo(f"{p.key_id:<10} {p.role.value:<6} {entry.created:<21} "
                   f"{', '.join(sorted(p.tenants))}")


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `mmrec keys list` shows it.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Remove a key; a running service refuses it from its next call on."""
    keys = key_file(config, data_dir)
    try:
        entry = keys.revoke(key_id)
    except MmrecError as exc:
        _fail(exc)
    if entry is None:
        typer.echo(f"no key with id {key_id!r} in {keys.path} (see `mmrec keys list`)",
                   err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked key {key_id} (role {entry.principal.role.value}, tenant(s) "
               f"{entry.principal.tenant_list()})")
