"""The server under soak: a real `mmrec serve` subprocess on loopback, and its RSS.

The server runs in its own process (``python -m engine serve``) with a config written
for the soak: CLIP off, the LLM off unless some requests ask for re-ranking, the real
packaged text encoder. The soak samples the server's resident memory from
``/proc/<pid>/status`` (its own process only, not an index build's child).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, *, text_model: str, llm: bool, optimize_after: int) -> Path:
    """The soak's server config: CLIP off, the LLM only when re-ranking is asked for.

    ``optimize_after`` is low enough that a long soak triggers the store's background
    HNSW builds (copy and swap in a child process), so that path is soaked too.
    """
    path.write_text(
        'log_level = "WARNING"\n'
        '[clip]\nenabled = false\npretrained = ""\n'
        f'[rerank]\nmodel = "{"smollm2" if llm else ""}"\n'
        f'[text_encoder]\nmodel = "{text_model}"\n'
        f'[store]\noptimize_after = {optimize_after}\n'
        '[service]\ngrace_seconds = 1.0\n')
    return path


@dataclass
class ServerProcess:
    """A started `mmrec serve` child: its process, port and log file."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        """The server's process id (whose RSS is sampled)."""
        return self.process.pid

    @property
    def target(self) -> str:
        """host:port for the client."""
        return f"{LOOPBACK}:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for a failure message."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the service drains for its grace time), SIGKILL if it hangs; exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=timeout)


def start_server(config: Path, data_dir: Path, log: Path) -> ServerProcess:
    """Start `python -m engine serve` on a free loopback port (returns before it is ready)."""
    port = free_port()
    command = [sys.executable, "-m", "engine", "serve", "--config", str(config),
               "--data-dir", str(data_dir), "--host", LOOPBACK, "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    return ServerProcess(process, port, log)


def wait_listening(server: ServerProcess, timeout: float) -> None:
    """Block until the server accepts connections (a channel opened earlier would sit in
    connect backoff), or raise with its log when it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mmrec serve exited with {server.process.returncode}:\n"
                               f"{server.log_tail()}")
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, server.port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"mmrec serve not listening after {timeout:.0f} s:\n{server.log_tail()}")


def rss_mib(pid: int, field: str = "VmRSS") -> float | None:
    """A process's resident memory (or another ``Vm*`` field) in MiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (an index build's optimizer), found by scanning /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:  # after the command name: state, ppid, ...
            found.append(int(stat.parent.name))
    return found
