"""The bulk pipeline under faults: SIGKILL and resume, a failing target, the service target."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.client import MmrecClient
from engine.config import EngineConfig
from engine.domain import Unavailable
from engine.runtime.engine import Engine
from indexers import checkpoint as cp
from indexers.fetch import FetchOptions
from indexers.job import run_index_job
from indexers.pipeline import IndexJob, JobOptions
from indexers.sources import open_source
from indexers.targets import StoreTarget
from tests.conftest import ServerThread, make_config, png_bytes

ROWS = 1200


def big_catalog(path: Path) -> tuple[Path, set[str], set[int]]:
    """ROWS rows, every 25th bad in one of four ways; returns valid ids and bad positions."""
    lines, valid, bad = [], set(), set()
    for n in range(1, ROWS + 1):
        if n % 25 == 0:
            kind = (n // 25) % 4
            lines.append(["{broken", json.dumps({"title": "no id"}), json.dumps({"id": f"e{n}"}),
                          json.dumps({"id": f"t{n}", "title": ["x"]})][kind])
            bad.add(n)
        else:
            lines.append(json.dumps({"id": f"item-{n}", "title": f"Item number {n}",
                                     "text": f"Words {n % 97} and {n % 13}"}))
            valid.add(f"item-{n}")
    path.write_text("\n".join(lines) + "\n")
    return path, valid, bad


def index_process(catalog: Path, config: Path, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "indexers", str(catalog), "--config", str(config),
         "--data-dir", str(data_dir), "--batch-size", "8", "--checkpoint-seconds", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_progress(checkpoint: Path, above: int, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        state = cp.load(checkpoint)
        if state is not None and state.position > above and not state.done:
            return state.position
        time.sleep(0.005)
    raise AssertionError(f"job made no progress past {above} (exit {proc.poll()})")


def test_sigkill_at_any_moment_then_resume_loses_and_duplicates_nothing(
        tmp_path: Path, tiny_text_dir: Path) -> None:
    catalog, valid, bad = big_catalog(tmp_path / "catalog.jsonl")
    config = tmp_path / "mmrec.toml"
    config.write_text(f'device = "cpu"\n[clip]\nenabled = false\n'
                      f'[text_encoder]\nmodel = "{tiny_text_dir}"\n')
    data_dir = tmp_path / "store"
    checkpoint, letters = cp.job_files(data_dir / "jobs", catalog)
    kills = []
    for above in (0, ROWS // 3):
        proc = index_process(catalog, config, data_dir)
        kills.append(wait_for_progress(checkpoint, above, proc))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert kills[0] < kills[1] < ROWS
    proc = index_process(catalog, config, data_dir)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    resumed = re.search(r"resumed after row (\d+)", " ".join(output.split()))
    assert resumed and kills[1] <= int(resumed.group(1)) < ROWS, output

    engine = Engine.from_config(make_config(data_dir, tiny_text_dir))
    try:
        assert engine.store.count() == len(valid)
        found = engine.get(sorted(valid), "default")
        assert {r.id for r in found} == valid
    finally:
        engine.close()
    dead_rows = [json.loads(line)["row"] for line in letters.read_text().splitlines()]
    assert sorted(dead_rows) == sorted(bad)  # each bad row exactly once
    state = cp.load(checkpoint)
    assert state is not None and state.done
    assert (state.indexed, state.failed) == (len(valid), len(bad))


class FakeFailingTarget(StoreTarget):
    """A fake fault: the store becomes unreachable after ``fail_after`` batches."""

    def __init__(self, *args: Any, fail_after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.left = fail_after

    def write(self, encoded: list[Any]) -> list[tuple[int, str]]:
        if self.left == 0:
            raise Unavailable("store went away (injected)")
        self.left -= 1
        return super().write(encoded)


def test_target_failure_stops_the_job_and_resume_completes(
        engine: Engine, tmp_path: Path) -> None:
    catalog, valid, bad = big_catalog(tmp_path / "catalog.jsonl")
    checkpoint, letters = cp.job_files(tmp_path / "jobs", catalog)
    options = JobOptions(batch_size=16, checkpoint_seconds=0, progress=False)
    failing = FakeFailingTarget(engine, FetchOptions(), fail_after=4)
    with pytest.raises(Unavailable, match="injected"):
        IndexJob(open_source(catalog), failing, checkpoint_file=checkpoint, dead_letter=letters,
                 options=options).run()
    state = cp.load(checkpoint)
    assert state is not None and 0 < state.position < ROWS and not state.done
    summary = IndexJob(open_source(catalog), StoreTarget(engine, FetchOptions()),
                       checkpoint_file=checkpoint, dead_letter=letters, options=options).run()
    assert summary.resumed_from == state.position
    assert (summary.indexed, summary.failed) == (len(valid), len(bad))
    assert engine.store.count() == len(valid)
    dead_rows = [json.loads(line)["row"] for line in letters.read_text().splitlines()]
    assert sorted(dead_rows) == sorted(bad)


def test_index_through_the_service(server: ServerThread, tiny_config: EngineConfig,
                                   tmp_path: Path) -> None:
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(1))
    (folder / "bad.png").write_bytes(b"nope")
    rows = [{"id": f"r{i}", "title": f"Row {i}"} for i in range(40)]
    rows += [{"id": "pic", "image": "a.png"}, {"id": "broken", "image": "bad.png"},
             {"id": "empty"}]
    catalog = folder / "catalog.jsonl"
    catalog.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    summary = run_index_job(tiny_config, catalog, service=server.target,
                            options=JobOptions(batch_size=8, progress=False),
                            checkpoint_dir=tmp_path / "jobs")
    assert (summary.indexed, summary.failed) == (41, 2)
    assert summary.store_count == 41
    _, letters = cp.job_files(tmp_path / "jobs", catalog)
    dead = {d["id"]: d["reason"] for d in map(json.loads, letters.read_text().splitlines())}
    assert set(dead) == {"broken", "empty"}
    assert "could not be decoded" in dead["broken"]
    with MmrecClient(server.target) as client:
        assert [r.id for r in client.get_items(["r0", "pic"])] == ["r0", "pic"]
    again = run_index_job(tiny_config, catalog, service=server.target,
                          options=JobOptions(progress=False), checkpoint_dir=tmp_path / "jobs")
    assert again.already_done and again.store_count == 41


def test_progress_and_summary_output(tmp_path: Path, tiny_text_dir: Path) -> None:
    catalog, valid, bad = big_catalog(tmp_path / "catalog.jsonl")
    config = tmp_path / "mmrec.toml"
    config.write_text(f'device = "cpu"\n[clip]\nenabled = false\n'
                      f'[text_encoder]\nmodel = "{tiny_text_dir}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "engine", "index", str(catalog), "--config", str(config),
         "--data-dir", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "indexing:" in result.stderr and "row/s" in result.stderr  # tqdm bar with rate
    assert "100%" in result.stderr
    out = " ".join(result.stdout.split())
    assert f"indexed {len(valid)} items, failed {len(bad)} rows" in out
    assert "stages (items per busy second): read" in out and "encode" in out
    assert f"Store holds {len(valid)} items" in out


def test_index_into_a_qdrant_server_store(engine: Engine, tiny_config: EngineConfig,
                                          tmp_path: Path) -> None:
    """The same job writes to ServerStore (qdrant-client; `:memory:` stands in for a server)."""
    from qdrant_client import QdrantClient

    from engine.store import ServerStore

    catalog, valid, bad = big_catalog(tmp_path / "catalog.jsonl")
    edge, engine.store = engine.store, ServerStore(QdrantClient(":memory:"), engine.schema)
    try:
        summary = run_index_job(tiny_config, catalog, engine=engine,
                                options=JobOptions(batch_size=64, progress=False),
                                checkpoint_dir=tmp_path / "jobs")
        assert (summary.indexed, summary.failed) == (len(valid), len(bad))
        assert engine.store.count() == len(valid)
        assert {r.id for r in engine.get(sorted(valid)[:50], "default")} == set(sorted(valid)[:50])
    finally:
        engine.store.close()
        engine.store = edge
