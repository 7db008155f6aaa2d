"""The indexing job: good rows stored once, every bad row kind dead-lettered, re-runs idempotent."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from engine.config import EngineConfig
from engine.runtime.engine import Engine
from indexers.job import run_index_job
from indexers.pipeline import JobOptions
from tests.conftest import png_bytes

QUIET = JobOptions(batch_size=2, progress=False)


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (9000, 8000)).save(buf, format="PNG")
    return buf.getvalue()


def write_catalog(folder: Path) -> Path:
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "ok.png").write_bytes(png_bytes(1))
    (folder / "img" / "truncated.png").write_bytes(png_bytes(2)[:50])
    (folder / "img" / "huge.png").write_bytes(bomb_png())
    (folder / "img" / "text.png").write_text("this is not an image")
    lines = [
        json.dumps({"id": "a", "title": "Apple", "text": "Red fruit", "colour": "red"}),
        json.dumps({"id": 7, "title": "Seven"}),
        json.dumps({"id": "pic", "image": "img/ok.png"}),
        json.dumps({"id": "uri", "title": "By URI", "image": f"file://{folder}/img/ok.png"}),
        "",
        "{not json",
        json.dumps({"title": "no id"}),
        json.dumps({"id": "empty"}),
        json.dumps({"id": "typed", "title": 5}),
        json.dumps({"id": "trunc", "title": "T", "image": "img/truncated.png"}),
        json.dumps({"id": "gone", "title": "G", "image": "img/missing.png"}),
        json.dumps([1, 2]),
        json.dumps({"id": "huge", "title": "H", "image": "img/huge.png"}),
        json.dumps({"id": "notimg", "title": "N", "image": "img/text.png"}),
        json.dumps({"id": "web", "title": "W", "image": "http://127.0.0.1:9/x.png"}),
        json.dumps({"id": "last", "title": "Last one"}),
    ]
    path = folder / "catalog.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "bad\xff"}\n')
    return path


EXPECTED_BAD = {
    6: "not valid JSON",
    7: "no `id`",
    8: "no title, no text and no image",
    9: "`title` must be a string",
    10: "corrupt or truncated",
    11: "does not exist",
    12: "JSON object",
    13: "above the limit",
    14: "could not be decoded",
    15: "HTTP",
    17: "UTF-8",
}


def test_every_bad_row_kind_is_dead_lettered_and_good_rows_stored(
        engine: Engine, tiny_config: EngineConfig, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "cat")
    letters = tmp_path / "dead.jsonl"
    summary = run_index_job(tiny_config, catalog, engine=engine, options=QUIET,
                            dead_letter=letters, checkpoint_dir=tmp_path / "jobs")
    assert (summary.indexed, summary.failed) == (5, len(EXPECTED_BAD))
    assert summary.store_count == engine.store.count() == 5
    dead = {d["row"]: d for d in map(json.loads, letters.read_text().splitlines())}
    assert sorted(dead) == sorted(EXPECTED_BAD)
    for row, needle in EXPECTED_BAD.items():
        assert needle in dead[row]["reason"], (row, dead[row])
    assert dead[10]["id"] == "trunc" and dead[10]["raw"].startswith('{"id": "trunc"')
    [apple] = engine.get(["a"], "default")
    assert apple.attributes == {"colour": "red"}
    assert [r.id for r in engine.get(["7", "pic", "uri", "last"], "default")] == [
        "7", "pic", "uri", "last"]


def test_rerun_is_idempotent_and_updates_replace(engine: Engine, tiny_config: EngineConfig,
                                                 tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "cat")
    kwargs = {"engine": engine, "options": QUIET, "dead_letter": tmp_path / "dead.jsonl",
              "checkpoint_dir": tmp_path / "jobs"}
    run_index_job(tiny_config, catalog, **kwargs)
    again = run_index_job(tiny_config, catalog, **kwargs)
    assert again.already_done and again.store_count == 5
    forced = run_index_job(tiny_config, catalog, **{**kwargs, "options": JobOptions(
        batch_size=3, restart=True, progress=False)})
    assert (forced.indexed, forced.failed, forced.store_count) == (5, len(EXPECTED_BAD), 5)
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == len(EXPECTED_BAD)

    lines = catalog.read_bytes().split(b"\n")
    lines[0] = json.dumps({"id": "a", "title": "Green apple"}).encode()
    catalog.write_bytes(b"\n".join(lines))
    updated = run_index_job(tiny_config, catalog, **kwargs)
    assert not updated.already_done and updated.store_count == 5
    assert engine.get(["a"], "default")[0].title == "Green apple"
