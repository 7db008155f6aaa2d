"""The `mmrec` commands: serve as a real process (SIGTERM drains), search/info/index via the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from engine.cli import app
from engine.client import MmrecClient
from engine.domain import ItemRecord
from tests.conftest import ServerThread

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: Path, text_dir: Path) -> Path:
    path.write_text(
        'device = "cpu"\nlog_level = "INFO"\n'
        '[clip]\npretrained = ""\n[rerank]\nmodel = ""\n'
        f'[text_encoder]\nmodel = "{text_dir}"\n'
    )
    return path


def test_serve_process_drains_on_sigterm(tmp_path: Path, tiny_text_dir: Path) -> None:
    config = write_config(tmp_path / "mmrec.toml", tiny_text_dir)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--config", str(config),
         "--data-dir", str(tmp_path / "store"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        with MmrecClient(f"127.0.0.1:{port}") as client:
            client.wait_ready(timeout=120)
            assert client.upsert_items([(ItemRecord(id="x", title="Chair"), None)]).upserted == 1
            info = client.info()
        assert info.item_count == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    assert "CLIP channel off" in output
    assert "shutting down" in output and "stopped" in output
    # The store was closed cleanly: a new process can open the same data dir.
    result = runner.invoke(app, ["index", str(write_rows(tmp_path / "c.jsonl")), "--config",
                                 str(config), "--data-dir", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert "Store holds 2 items" in result.output


def write_rows(path: Path) -> Path:
    path.write_text(json.dumps({"id": "y", "title": "Table"}) + "\n")
    return path


def test_search_and_info_commands(server: ServerThread) -> None:
    with MmrecClient(server.target) as client:
        client.upsert_items([(ItemRecord(id="lamp", title="Desk lamp"), None),
                             (ItemRecord(id="sofa", title="Green sofa"), None)])
    result = runner.invoke(app, ["search", "Desk lamp", "-k", "1", "--target", server.target])
    assert result.exit_code == 0, result.output
    assert "lamp" in result.output and "Desk lamp" in result.output
    assert "sofa" not in result.output
    result = runner.invoke(app, ["info", "--target", server.target])
    assert result.exit_code == 0, result.output
    assert "2 items" in result.output and "channel clip" in result.output
    result = runner.invoke(app, ["search", "x", "-k", "9999", "--target", server.target])
    assert result.exit_code == 2 and "INVALID_ARGUMENT" in result.output
    result = runner.invoke(app, ["search", "--target", server.target])
    assert result.exit_code != 0


def test_search_reports_unreachable_service() -> None:
    start = time.perf_counter()
    result = runner.invoke(app, ["search", "x", "--target", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 2 and "UNAVAILABLE" in result.output
    assert time.perf_counter() - start < 40


def test_python_m_indexers_runs_the_job_without_the_command_line(
        tmp_path: Path, tiny_text_dir: Path) -> None:
    """``python -m indexers`` is the same job as ``mmrec index``, started on its own."""
    config = write_config(tmp_path / "mmrec.toml", tiny_text_dir)
    result = subprocess.run(
        [sys.executable, "-m", "indexers", str(write_rows(tmp_path / "c.jsonl")), "--config",
         str(config), "--data-dir", str(tmp_path / "store"), "--no-progress"],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "indexed 1 items" in result.stdout and "Store holds 1 items" in result.stdout
    again = subprocess.run(
        [sys.executable, "-m", "indexers", str(tmp_path / "c.jsonl"), "--config", str(config),
         "--data-dir", str(tmp_path / "store"), "--no-progress"],
        capture_output=True, text=True, timeout=240)
    assert again.returncode == 0 and "already indexed" in again.stdout, again.stderr
