"""EdgeStore durability under SIGKILL: every acknowledged write survives a kill and restart.

Each round starts `mmrec serve` on one data dir, checks that the state the previous rounds
acknowledged is there, drives writes from two client threads (items: upsert a new version
or delete; users: record an event or erase the user), SIGKILLs the server at a seeded
random count of acknowledged writes while writes are in flight, and goes on with the next
round on the same data dir. A write that was in flight at the kill may or may not have
landed; an acknowledged one must be there, with its latest content, and a deletion must
stay deleted. ``MMREC_KILL_ROUNDS`` (default 20) and ``MMREC_KILL_SEED`` (default 0) set
the run; ``MMREC_KILL_ROUNDS=200`` is the longer documented run.

**Cheap starts.** A fresh `python -m engine serve` takes ~12-15 s here, ~80 % of it
imports (torch ~2.9 s, open_clip with torchvision and timm ~3.8 s, transformers ~1.1 s,
qdrant-client ~0.8 s, measured with ``-X importtime`` on the busy 2-core machine), so 21
starts would take minutes. The test therefore starts one launcher process that imports the
command line once and forks a child per round that runs the real ``serve`` command
(``engine.cli.app``): the child loads the config, the tiny text model and both stores and
serves as `mmrec serve` does, in its own process group, which the test SIGKILLs whole (an
index build's child included, as a container kill would). CLIP and the re-ranker are off.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.client import MmrecClient
from engine.domain import Event, ItemRecord, MmrecError, NotFound

ROUNDS = int(os.environ.get("MMREC_KILL_ROUNDS", "20"))
SEED = int(os.environ.get("MMREC_KILL_SEED", "0"))
ROOT = Path(__file__).resolve().parents[1]
BASE = [f"b{i}" for i in range(5)]
"""Items that are never deleted: the events' items."""
ITEMS = [f"w{i}" for i in range(16)]
USERS = [f"u{i}" for i in range(8)]


def launcher() -> None:
    """The launcher's program: import the command line once, then per line on stdin fork a
    child that runs ``mmrec <line>`` in its own process group, and print the child's pid."""
    import importlib

    from engine.cli import app  # the expensive imports, paid once

    for lazy in ("transformers.models.bert.modeling_bert",  # transformers imports these on
                 "transformers.models.bert.tokenization_bert"):  # first use: ~3.5 s
        with contextlib.suppress(ImportError):
            importlib.import_module(lazy)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps killed children
    for line in sys.stdin:
        argv, log = line.split()[:-1], line.split()[-1]
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # serve waits for its own children
            os.setpgid(0, 0)
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(out, 1)
            os.dup2(out, 2)
            code = 0
            try:
                app(argv, prog_name="mmrec")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                os._exit(code)
        print(pid, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Launcher:
    """The launcher process and the data dir its children serve."""

    process: subprocess.Popen[str]
    config: Path
    data_dir: Path
    logs: Path

    def serve(self, round_: int) -> tuple[int, MmrecClient]:
        """Fork a `mmrec serve` child; return its pid and a client once it is serving."""
        port = free_port()
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"serve --config {self.config} --data-dir {self.data_dir} "
                                 f"--port {port} {self.logs / f'serve-{round_}.log'}\n")
        self.process.stdin.flush()
        pid = int(self.process.stdout.readline())
        wait_listening(port, round_)  # a channel made earlier would sit in connect backoff
        client = MmrecClient(f"127.0.0.1:{port}", timeout=20)
        try:
            client.wait_ready(timeout=90)
        except TimeoutError:
            log = (self.logs / f"serve-{round_}.log").read_text()[-3000:]
            raise AssertionError(f"round {round_}: the server did not start:\n{log}") from None
        return pid, client


def wait_listening(port: int, round_: int, timeout: float = 90.0) -> None:
    """Block until something accepts connections on the loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)
    raise AssertionError(f"round {round_}: nothing listens on port {port} after {timeout} s")


def kill_group(pid: int) -> None:
    """SIGKILL the server's process group and wait until the server is gone."""
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.005)
    raise AssertionError(f"server {pid} still alive 10 s after SIGKILL")


@pytest.fixture
def launcher_process(tmp_path: Path, tiny_text_dir: Path) -> Iterator[Launcher]:
    config = tmp_path / "mmrec.toml"
    config.write_text(
        'device = "cpu"\nlog_level = "WARNING"\n'
        '[clip]\nenabled = false\npretrained = ""\n[rerank]\nmodel = ""\n'
        f'[text_encoder]\nmodel = "{tiny_text_dir}"\n'
        '[store]\noptimize_after = 40\n'  # index builds (copy and swap) get killed too
        '[service]\ngrace_seconds = 0.0\n')
    logs = tmp_path / "logs"
    logs.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", "import tests.test_kill_restart as t; t.launcher()"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    yield Launcher(process, config, tmp_path / "data", logs)
    if process.stdin is not None:
        process.stdin.close()
    process.kill()  # the launcher serves nothing itself; its interpreter teardown takes seconds
    process.wait(timeout=30)


@dataclass
class Ledger:
    """What may be stored per key: every state consistent with the acknowledged writes.

    Items map to their title (None: absent), users to their stored event count. An
    acknowledged write narrows a key to one state; a write in flight at a kill widens it
    to both outcomes; a check after a restart narrows it to what is there.
    """

    items: dict[str, set[str | None]] = field(default_factory=dict)
    users: dict[str, set[int]] = field(default_factory=dict)
    acknowledged: int = 0
    in_flight_at_kill: int = 0
    errors: list[BaseException] = field(default_factory=list)
    """What went wrong in a writer other than the kill (a refused write, a failed check)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked(self) -> None:
        with self.lock:
            self.acknowledged += 1


def recorded(writer: Callable[..., None]) -> Callable[..., None]:
    """Run a writer, keeping any error it raises in the ledger (a thread cannot fail a test)."""
    def run(client: MmrecClient, ledger: Ledger, *args: object) -> None:
        try:
            writer(client, ledger, *args)
        except BaseException as exc:
            ledger.errors.append(exc)
    return run


@recorded
def item_writer(client: MmrecClient, ledger: Ledger, rng: random.Random, round_: int,
                stop: threading.Event) -> None:
    """Upsert new versions of items and delete items until the server dies or ``stop``."""
    seq = 0
    while not stop.is_set():
        key, seq = rng.choice(ITEMS), seq + 1
        title = None if rng.random() < 0.25 else f"{key} round {round_} version {seq}"
        before = ledger.items.setdefault(key, {None})
        ledger.items[key] = before | {title}  # in flight: either outcome
        try:
            if title is None:
                client.delete_items([key])
            else:
                assert client.upsert_items([(ItemRecord(id=key, title=title), None)]).upserted
        except MmrecError:
            ledger.in_flight_at_kill += 1
            return
        ledger.items[key] = {title}
        ledger.acked()


@recorded
def user_writer(client: MmrecClient, ledger: Ledger, rng: random.Random,
                stop: threading.Event) -> None:
    """Record click events and erase users until the server dies or ``stop``."""
    while not stop.is_set():
        user, erase = rng.choice(USERS), rng.random() < 0.15
        before = ledger.users.setdefault(user, {0})
        after = {0} if erase else {count + 1 for count in before}
        ledger.users[user] = before | after
        try:
            if erase:
                client.delete_user(user)
            else:
                report = client.record_events([Event(user, rng.choice(BASE), "click")])
                assert report.recorded == 1, report.rejected
        except MmrecError:
            ledger.in_flight_at_kill += 1
            return
        ledger.users[user] = after
        ledger.acked()


def check_items(client: MmrecClient, ledger: Ledger, round_: int) -> None:
    """Every item is in a state the acknowledged writes allow (then that state is known)."""
    for key, allowed in ledger.items.items():
        try:
            found: str | None = client.get_items([key])[0].title
        except NotFound:
            found = None
        assert found in allowed, f"round {round_}: item {key} is {found!r}, expected {allowed}"
        ledger.items[key] = {found}


def check_users(client: MmrecClient, ledger: Ledger, round_: int, users: list[str]) -> None:
    """Erase ``users`` and check the events erased are a count the writes allow."""
    for user in users:
        erasure = client.delete_user(user)
        allowed = ledger.users.get(user, {0})
        assert erasure.events in allowed, (
            f"round {round_}: user {user} had {erasure.events} events, expected {allowed}")
        assert erasure.profile == (erasure.events > 0), f"round {round_}: user {user}"
        ledger.users[user] = {0}


def run_writers(client: MmrecClient, ledger: Ledger, rng: random.Random, round_: int,
                kill: Callable[[], None]) -> None:
    """Write from two threads; kill the server after a seeded number of acknowledgements."""
    stop = threading.Event()
    target = ledger.acknowledged + rng.randint(3, 40)
    threads = [
        threading.Thread(target=item_writer, args=(client, ledger, random.Random(rng.random()),
                                                   round_, stop)),
        threading.Thread(target=user_writer, args=(client, ledger, random.Random(rng.random()),
                                                   stop)),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while ledger.acknowledged < target and time.monotonic() < deadline:
        if not any(thread.is_alive() for thread in threads):
            raise AssertionError(f"round {round_}: both writers stopped before the kill")
        time.sleep(0.001)
    time.sleep(rng.uniform(0.0, 0.02))  # land the kill anywhere in a write
    kill()
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not ledger.errors, f"round {round_}: {ledger.errors!r}"


def test_acknowledged_writes_survive_sigkill(launcher_process: Launcher) -> None:
    rng = random.Random(SEED)
    ledger = Ledger()
    started = time.monotonic()
    for round_ in range(ROUNDS + 1):
        pid, client = launcher_process.serve(round_)
        with client:
            if round_ == 0:
                report = client.upsert_items([(ItemRecord(id=b, title=f"base {b}"), None)
                                              for b in BASE])
                assert report.upserted == len(BASE)
            check_items(client, ledger, round_)
            assert [r.id for r in client.get_items(BASE)] == BASE
            # Users alternate: half are checked (and erased) each round, so the other half
            # carry their events through two kills before they are checked.
            check_users(client, ledger, round_, USERS[round_ % 2::2])
            if round_ == ROUNDS:
                check_users(client, ledger, round_, USERS)
                kill_group(pid)
                break
            run_writers(client, ledger, rng, round_, functools.partial(kill_group, pid))
    elapsed = time.monotonic() - started
    print(f"\nkill-restart: {ROUNDS} rounds, {ledger.acknowledged} acknowledged writes, "
          f"{ledger.in_flight_at_kill} in flight at a kill, 0 lost, {elapsed:.1f} s")
    assert ledger.acknowledged >= 3 * ROUNDS
