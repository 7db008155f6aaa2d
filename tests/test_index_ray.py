"""The indexing job on Ray Data (`mmrec index --ray`): the single-process job's guarantees.

Local Ray with two CPUs and two indexing actors, one Ray session for the module (starting
Ray costs seconds), the tiny text model with CLIP off, and the real service on loopback as
the target (no Qdrant server is installable here; the server-store path runs when
``QDRANT_URL`` names one). Checked: every good row stored once with its content, bad rows
dead-lettered once with their reasons, the summary's counts, ``--max-failed``, and a run
interrupted by a fault resumes from its checkpoint without repeating or losing a row.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.domain import InvalidInput, Unavailable
from engine.runtime.engine import Engine
from indexers import checkpoint as cp
from indexers.fetch import FetchOptions
from indexers.job import run_index_job
from indexers.pipeline import JobOptions
from indexers.ray_job import ChunkLedger, ChunkOutcome, RayIndexJob, RayOptions, outcomes
from indexers.sources import open_source
from indexers.targets import Prepared, Rejection, ServiceTarget, Target
from tests.conftest import ServerThread, png_bytes

ROWS = 160
BAD_KINDS = ("not valid JSON", "no `id`", "no title, no text and no image",
             "`title` must be a string")


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """One local Ray for the module, two CPUs (the jobs use it instead of starting theirs)."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture
def text_config(tmp_path: Path, tiny_text_dir: Path) -> EngineConfig:
    """The tiny text model, CLIP off, an embedded store under tmp_path (the service's)."""
    return EngineConfig.load(device="cpu", clip={"enabled": False},
                             text_encoder={"model": str(tiny_text_dir)},
                             store={"data_dir": tmp_path / "store"})


@pytest.fixture
def service(text_config: EngineConfig) -> Iterator[ServerThread]:
    """The service on loopback over a fresh store."""
    engine = Engine.from_config(text_config, load_reranker=False)
    server = ServerThread(engine, text_config)
    yield server
    server.stop()
    engine.close()


@dataclass
class Catalog:
    path: Path
    valid: dict[str, str]
    """Stored ids -> their titles."""
    bad: dict[int, str]
    """Position -> a word of the reason it must be dead-lettered with."""


def write_catalog(folder: Path) -> Catalog:
    """ROWS rows: every 20th bad in one of four ways, an image row with text (stored by its
    text: CLIP is off), one with only an image (refused by the service) and a missing image."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(png_bytes(1))
    lines, valid, bad = [], {}, {}
    for n in range(1, ROWS + 1):
        if n % 20 == 0:
            kind = (n // 20) % 4
            lines.append(["{broken", json.dumps({"title": "no id"}), json.dumps({"id": f"e{n}"}),
                          json.dumps({"id": f"t{n}", "title": ["x"]})][kind])
            bad[n] = BAD_KINDS[kind]
        elif n == 33:
            lines.append(json.dumps({"id": f"item-{n}", "image": "a.png"}))
            bad[n] = "no text and no usable image"
        elif n == 47:
            lines.append(json.dumps({"id": f"item-{n}", "title": "Gone", "image": "gone.png"}))
            bad[n] = "does not exist"
        else:
            row = {"id": f"item-{n}", "title": f"Item number {n}", "text": f"Words {n % 13}"}
            if n == 5:
                row["image"] = "a.png"
            lines.append(json.dumps(row))
            valid[f"item-{n}"] = row["title"]
    path = folder / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return Catalog(path, valid, bad)


def dead_letters(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_stored_once(server: ServerThread, catalog: Catalog) -> None:
    """The service holds exactly the good rows, each with its content."""
    with MmrecClient(server.target) as client:
        assert client.info().item_count == len(catalog.valid)
        ids = sorted(catalog.valid)
        assert {r.id: r.title for r in client.get_items(ids)} == catalog.valid


def assert_dead_lettered_once(path: Path, catalog: Catalog) -> None:
    letters = dead_letters(path)
    assert [d["row"] for d in letters] == sorted(catalog.bad)  # once each, in source order
    for letter in letters:
        assert catalog.bad[letter["row"]] in letter["reason"], letter


@pytest.mark.slow
def test_command_indexes_on_ray_and_reports(ray_session: Any, service: ServerThread,
                                            tmp_path: Path) -> None:
    """`mmrec index --ray`: the good rows stored, the bad ones dead-lettered, the summary
    printed; with --max-failed 0 the few bad rows make it exit 1 (the good rows stay)."""
    catalog = write_catalog(tmp_path / "cat")
    letters = tmp_path / "dead.jsonl"
    args = ["index", str(catalog.path), "--ray", "--workers", "2", "--service", service.target,
            "--batch-size", "4", "--checkpoint-dir", str(tmp_path / "jobs"),
            "--dead-letter", str(letters), "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--max-failed", "0"])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert f"indexed {len(catalog.valid)} items, failed {len(catalog.bad)} rows" in out
    assert "on Ray Data, 2 workers" in out and "rows/s" in out
    assert f"Store holds {len(catalog.valid)} items" in out
    assert "summed over the workers" in out and "more than --max-failed 0" in out
    assert str(letters) in out.replace(" ", "")
    assert_stored_once(service, catalog)
    assert_dead_lettered_once(letters, catalog)

    again = CliRunner().invoke(app, args)  # done already: no Ray run, nothing written
    assert again.exit_code == 0, again.output
    assert "already indexed" in again.output
    assert_dead_lettered_once(letters, catalog)


class FakeFaultyServiceTarget(ServiceTarget):
    """The real ServiceTarget, logging the ids it wrote; with ``fail_row``, its write of the
    batch holding that row waits until the driver checkpointed the row before it, then
    fails as an unreachable service would (so the interruption lands at a known place)."""

    def __init__(self, client: MmrecClient, plan: FakeFaultPlan) -> None:
        super().__init__(client, FetchOptions())
        self.plan = plan
        self.log = plan.log_dir / f"{os.getpid()}-{uuid.uuid4().hex[:6]}.txt"

    def write(self, encoded: list[Prepared]) -> list[Rejection]:
        ids = [p.record.id for p in encoded]
        if self.plan.fail_row is not None and f"item-{self.plan.fail_row}" in ids:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                state = cp.load(self.plan.checkpoint)
                if state is not None and state.position >= self.plan.fail_row - 1:
                    break
                time.sleep(0.05)
            raise Unavailable("the service went away (injected)")
        rejected = super().write(encoded)
        refused = {i for i, _ in rejected}
        with self.log.open("a") as fh:
            fh.writelines(f"{item}\n" for i, item in enumerate(ids) if i not in refused)
        return rejected


@dataclass(frozen=True)
class FakeFaultPlan:
    """Opens each actor's FakeFaultyServiceTarget (picklable: it travels to the actors)."""

    address: str
    log_dir: Path
    checkpoint: Path
    fail_row: int | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Target]:
        with MmrecClient(self.address, timeout=60) as client:
            yield FakeFaultyServiceTarget(client, self)

    def written(self) -> list[str]:
        return [line for path in sorted(self.log_dir.glob("*.txt"))
                for line in path.read_text().splitlines()]


def position_of(item_id: str) -> int:
    return int(item_id.removeprefix("item-"))


@pytest.mark.slow
def test_interrupted_ray_job_resumes_without_repeats_or_losses(
        ray_session: Any, service: ServerThread, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "cat")
    checkpoint, letters = cp.job_files(tmp_path / "jobs", catalog.path)
    options = JobOptions(batch_size=8, group_batches=1, checkpoint_seconds=0, progress=False)
    ray = RayOptions(workers=2)

    def run(plan: FakeFaultPlan) -> Any:
        plan.log_dir.mkdir()
        with MmrecClient(service.target) as client:
            driver = ServiceTarget(client, FetchOptions())
            return RayIndexJob(open_source(catalog.path), driver, plan, checkpoint_file=checkpoint,
                               dead_letter=letters, options=options, ray=ray).run()

    fail_row = 81  # the first row of chunk 10 (chunks of 8 rows)
    first = FakeFaultPlan(service.target, tmp_path / "run1", checkpoint, fail_row=fail_row)
    with pytest.raises(Unavailable, match="injected"):
        run(first)
    state = cp.load(checkpoint)
    assert state is not None and not state.done
    assert state.position == fail_row - 1  # the prefix stops before the failed chunk
    before = {n for n in catalog.bad if n <= state.position}
    assert [d["row"] for d in dead_letters(letters)] == sorted(before)  # none past the prefix

    second = FakeFaultPlan(service.target, tmp_path / "run2", checkpoint)
    summary = run(second)
    assert summary.resumed_from == state.position
    assert (summary.indexed, summary.failed) == (len(catalog.valid), len(catalog.bad))
    assert summary.store_count == len(catalog.valid)
    resumed = second.written()
    assert len(resumed) == len(set(resumed))  # no row written twice in the resumed run
    assert set(resumed) == {i for i in catalog.valid if position_of(i) > state.position}
    assert set(first.written()) | set(resumed) == set(catalog.valid)
    assert_stored_once(service, catalog)
    assert_dead_lettered_once(letters, catalog)
    final = cp.load(checkpoint)
    assert final is not None and final.done
    assert (final.indexed, final.failed) == (len(catalog.valid), len(catalog.bad))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QDRANT_URL"), reason="needs a Qdrant server: set "
                    "QDRANT_URL (none is installable here)")
def test_actors_encode_into_a_qdrant_server(ray_session: Any, text_config: EngineConfig,
                                            tmp_path: Path) -> None:
    """The server-store target: each actor loads the encoders once and upserts itself."""
    catalog = write_catalog(tmp_path / "cat")
    catalog.bad[33] = "only an image"  # refused by the actor's own target this time
    config = text_config.model_copy(update={"store": text_config.store.model_copy(update={
        "url": os.environ["QDRANT_URL"], "collection": f"mmrec_ray_{uuid.uuid4().hex[:8]}"})})
    summary = run_index_job(config, catalog.path, checkpoint_dir=tmp_path / "jobs",
                            options=JobOptions(batch_size=8, progress=False),
                            ray=RayOptions(workers=2))
    assert (summary.indexed, summary.failed) == (len(catalog.valid), len(catalog.bad))
    engine = Engine.from_config(config, load_reranker=False)
    try:
        assert engine.store.count() == len(catalog.valid)
        found = engine.get(sorted(catalog.valid), "default")
        assert {r.id: r.title for r in found} == catalog.valid
    finally:
        engine.close()


def test_ray_refuses_the_embedded_store(text_config: EngineConfig, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "cat")
    with pytest.raises(InvalidInput, match="--service HOST:PORT"):
        run_index_job(text_config, catalog.path, ray=RayOptions(workers=2))
    assert not (text_config.store.data_dir).exists()  # refused before opening anything


def bad(*positions: int) -> list[tuple[int, str, str, str]]:
    return [(p, f"i{p}", f"reason{p}: why", f"raw{p}") for p in positions]


def test_ledger_checkpoints_only_the_contiguous_prefix(tmp_path: Path) -> None:
    """Chunks finishing out of order: the prefix, counts and dead letters follow source order."""
    state = cp.Checkpoint(source="s", engine="e", position=10)
    letters = cp.DeadLetters(tmp_path / "dead.jsonl", 0)
    ledger = ChunkLedger(state, letters)
    ledger.add(ChunkOutcome(1, 16, stored=2, bad=bad(15)))
    assert not ledger.advance() and state.position == 10  # chunk 0 is still out
    ledger.add(ChunkOutcome(0, 13, stored=1, bad=bad(13, 11)))
    assert ledger.advance()
    assert (state.position, state.indexed, state.failed) == (16, 3, 3)
    assert state.reasons == {"reason11": 1, "reason13": 1, "reason15": 1}
    ledger.add(ChunkOutcome(3, 20, stored=0, bad=[], last=True))
    assert not ledger.advance() and state.position == 16
    with pytest.raises(RuntimeError, match="came back twice"):
        ledger.add(ChunkOutcome(1, 16, stored=2, bad=[]))
    with pytest.raises(RuntimeError, match="chunk 2 never came back"):
        ledger.check_complete()
    ledger.add(ChunkOutcome(2, 20, stored=4, bad=bad(17)))
    assert ledger.advance() and ledger.finished
    ledger.check_complete()
    letters.close()
    assert [d["row"] for d in dead_letters(tmp_path / "dead.jsonl")] == [11, 13, 15, 17]
    assert (state.position, state.indexed, state.failed) == (20, 7, 4)


class FakeMemoryTarget:
    """An in-process target: items kept in a dict (the stages run here, without Ray)."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def prepare(self, record: Any, base_dir: Path) -> Prepared:
        return Prepared(record)

    def encode(self, batch: Any) -> tuple[list[Prepared], list[Rejection]]:
        return list(batch), []

    def write(self, encoded: list[Prepared]) -> list[Rejection]:
        self.items.update((p.record.id, p.record.title) for p in encoded)
        return []


def test_stages_read_index_and_checkpoint_in_process(tmp_path: Path) -> None:
    """The read task's chunks through one BatchIndexer into the ledger, here in the test's
    process: every row accounted for once; a source that breaks mid-way stops the job
    with its own error."""
    stages = pytest.importorskip("indexers.ray_stages", reason="ray is not installed")
    catalog = write_catalog(tmp_path / "cat")
    del catalog.bad[33], catalog.bad[47]  # the fake target takes any image
    target = FakeMemoryTarget()
    indexer = stages.BatchIndexer(lambda: contextlib.nullcontext(target), catalog.path.parent)
    state = cp.Checkpoint(source="s", engine="e")
    ledger = ChunkLedger(state, cp.DeadLetters(tmp_path / "dead.jsonl", 0))
    read = stages.CatalogDatasource(open_source(catalog.path), 0, 16)
    for block in reversed(list(read.get_read_tasks(4)[0]())):  # out of order on purpose
        batch = {name: block[name].to_numpy(zero_copy_only=False) for name in block.schema.names}
        for outcome in outcomes(indexer(batch)):
            ledger.add(outcome)
    assert ledger.advance()
    ledger.check_complete()
    ledger.letters.close()
    valid = {**catalog.valid, "item-33": "", "item-47": "Gone"}
    assert target.items == valid
    assert (state.position, state.indexed, state.failed) == (ROWS, len(valid), len(catalog.bad))
    assert_dead_lettered_once(tmp_path / "dead.jsonl", catalog)

    broken = tmp_path / "broken.jsonl.gz"  # its head reads, its end is cut off
    rows = "".join(json.dumps({"id": f"r{n}", "title": f"Row {n} {n * 7919 % 10007}"}) + "\n"
                   for n in range(3000))
    whole = gzip.compress(rows.encode())
    broken.write_bytes(whole[:len(whole) // 2])
    blocks = list(stages.CatalogDatasource(open_source(broken), 0, 16).get_read_tasks(1)[0]())
    last = {name: blocks[-1][name].to_numpy(zero_copy_only=False)
            for name in blocks[-1].schema.names}
    with pytest.raises(InvalidInput):
        list(outcomes(indexer(last)))


def test_the_engine_does_not_import_ray() -> None:
    """Ray is imported only once a Ray run starts: the command line does not pay for it."""
    code = ("import sys, engine.cli, indexers.command, indexers.job, indexers.ray_job; "
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
