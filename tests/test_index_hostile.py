"""`mmrec index` over a hostile or careless catalog: real files, the real job, no mocks.

Each test is one defect found by testing the job: image paths that leave the catalog's
folder (absolute, ``..``, ``/proc``, ``/dev/zero``, a FIFO, symlinks out), a row of tens
of megabytes, a binary file given as the catalog, runs in which (nearly) every row
fails, and CSV numbers that stayed strings. The job must refuse each bad row with a
one-line reason, never block, never stop, and store every good row once.
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.config import EngineConfig
from engine.domain import InvalidInput
from engine.runtime.engine import Engine
from indexers.fetch import FetchOptions
from indexers.job import run_index_job
from indexers.pipeline import JobOptions, JobSummary
from indexers.sources import open_source
from tests.conftest import png_bytes
from tests.tiny_models import make_tiny_clip_settings

QUIET = JobOptions(batch_size=4, progress=False)
LIMIT = 200_000
"""``service.limits.max_image_bytes`` of the test config: the job's default image limit."""
runner = CliRunner()
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


def dead_letters(path: Path) -> dict[int, dict[str, Any]]:
    return {d["row"]: d for d in map(json.loads, path.read_text().splitlines())}


def index(config: EngineConfig, engine: Engine, catalog: Path, tmp_path: Path,
          **kwargs: Any) -> tuple[JobSummary, dict[int, dict[str, Any]]]:
    """Run the real job into the engine's store; the summary and the dead letters by row."""
    letters = tmp_path / "dead.jsonl"
    summary = run_index_job(config, catalog, engine=engine, options=QUIET, dead_letter=letters,
                            checkpoint_dir=tmp_path / "jobs", **kwargs)
    return summary, dead_letters(letters)


def hostile_image_catalog(root: Path) -> Path:
    """A JSONL catalog in ``root/cat`` whose image fields point everywhere they should not."""
    folder = root / "cat"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "ok.png").write_bytes(png_bytes(1))
    (root / "outside.png").write_bytes(png_bytes(2))
    (folder / "img" / "inner.png").symlink_to(folder / "img" / "ok.png")
    (folder / "img" / "leak.png").symlink_to(root / "outside.png")
    (folder / "img" / "passwd.png").symlink_to("/etc/passwd")
    os.mkfifo(folder / "img" / "pipe.png")
    (folder / "img" / "big.png").write_bytes(b"\x89PNG" + b"\0" * LIMIT)
    images = ["img/ok.png", "img/inner.png", str(root / "outside.png"), "../outside.png",
              f"file://{root}/outside.png", "/proc/self/status", "/dev/zero", "img/leak.png",
              "img/passwd.png", "img/pipe.png", "img/big.png"]
    lines = [json.dumps({"id": f"r{n}", "title": f"Row {n}", "image": image})
             for n, image in enumerate(images, start=1)]
    lines.append(json.dumps({"id": "last", "title": "Text only"}))
    path = folder / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_fifo
@pytest.mark.timeout(180)  # a FIFO that is opened blocks the job forever: fail instead
def test_image_paths_are_confined_to_the_catalog_folder(
        engine: Engine, tiny_config: EngineConfig, tmp_path: Path) -> None:
    summary, dead = index(tiny_config, engine, hostile_image_catalog(tmp_path), tmp_path)
    assert (summary.indexed, summary.failed) == (3, 9)
    assert [r.id for r in engine.get(["r1", "r2", "last"], "default")] == ["r1", "r2", "last"]
    for row in (3, 4, 5, 6, 7):
        assert dead[row]["reason"].startswith("image outside the catalog folder: "), dead[row]
        assert "resolves to" in dead[row]["reason"] and "--allow-outside-paths" in \
            dead[row]["reason"]
    assert "is a link to /etc/passwd" in dead[9]["reason"]
    assert "is a link to" in dead[8]["reason"] and "outside.png" in dead[8]["reason"]
    assert dead[10]["reason"].startswith("image not a regular file: ")
    assert "is a FIFO (named pipe)" in dead[10]["reason"]
    assert f"above the limit of {LIMIT:,} bytes" in dead[11]["reason"]
    assert all("\n" not in d["reason"] for d in dead.values())


@needs_fifo
@pytest.mark.timeout(180)
def test_allow_outside_paths_still_reads_regular_files_only(
        engine: Engine, tiny_config: EngineConfig, tmp_path: Path) -> None:
    fetch = FetchOptions(allow_outside_paths=True, max_bytes=LIMIT)
    summary, dead = index(tiny_config, engine, hostile_image_catalog(tmp_path), tmp_path,
                          fetch=fetch)
    assert (summary.indexed, summary.failed) == (7, 5)
    assert len(engine.get(["r3", "r4", "r5", "r8"], "default")) == 4
    assert sorted(dead) == [6, 7, 9, 10, 11]
    assert "could not be decoded" in dead[6]["reason"]  # /proc read, bounded, not an image
    assert "is a character device" in dead[7]["reason"]  # /dev/zero: never read
    assert "could not be decoded" in dead[9]["reason"]
    assert "is a FIFO" in dead[10]["reason"]
    assert "above the limit" in dead[11]["reason"]


@needs_fifo
@pytest.mark.timeout(180)
def test_image_folder_symlinks_and_captions_stay_inside(
        engine: Engine, tiny_config: EngineConfig, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    (tmp_path / "outside.png").write_bytes(png_bytes(3))
    (tmp_path / "secret.txt").write_text("Secret\nnot for the index")
    for name in ("a", "b", "c", "d"):
        (pics / f"{name}.png").write_bytes(png_bytes(ord(name)))
    (pics / "d.txt").write_text("Dee\nA caption inside")
    (pics / "b.txt").symlink_to(tmp_path / "secret.txt")
    os.mkfifo(pics / "c.txt")
    (pics / "leak.png").symlink_to("/etc/passwd")
    (pics / "out.png").symlink_to(tmp_path / "outside.png")
    summary, dead = index(tiny_config, engine, pics, tmp_path)
    assert (summary.indexed, summary.failed) == (2, 4)
    assert [r.title for r in engine.get(["a", "d"], "default")] == ["", "Dee"]
    by_id = {d["id"] or json.loads(d["raw"])["id"]: d["reason"] for d in dead.values()}
    assert by_id["b"].startswith("caption outside the catalog folder: ") and "is a link" in \
        by_id["b"]
    assert by_id["c"].startswith("caption not a regular file: ")
    assert "is a link to /etc/passwd" in by_id["leak"]
    assert "is a link to" in by_id["out"]


def test_oversize_rows_are_dead_lettered_without_parsing(
        engine: Engine, tiny_config: EngineConfig, tmp_path: Path) -> None:
    huge = b'{"id": "huge", "title": "' + b"x" * (20 << 20) + b'"}'
    catalog = tmp_path / "c.jsonl"
    catalog.write_bytes(b'{"id": "a", "title": "Apple"}\n' + huge + b'\n{"id": "b", "title": '
                        b'"Banana"}\n' + huge)  # the last line has no newline
    tracemalloc.start()
    started = time.perf_counter()
    rows = list(open_source(catalog).rows())
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 10 and peak < 8 << 20, (seconds, peak)
    assert [(r.position, r.fields is None) for r in rows] == [
        (1, False), (2, True), (3, False), (4, True)]
    assert rows[1].error == (f"row too large: {len(huge):,} bytes, above the limit of "
                             "1,048,576 bytes (raise --max-row-bytes to index it)")
    assert [r.position for r in open_source(catalog).rows(2)] == [3, 4]
    summary, dead = index(tiny_config, engine, catalog, tmp_path)
    assert (summary.indexed, summary.failed, summary.store_count) == (2, 2, 2)
    assert sorted(dead) == [2, 4] and len(dead[2]["raw"]) <= 10_000
    assert summary.reasons == {"row too large": 2}


def test_row_limit_is_exact_and_applies_to_csv(tmp_path: Path) -> None:
    catalog = tmp_path / "c.csv"
    fits = b"a," + b"y" * 8  # 10 bytes before the newline
    catalog.write_bytes(b"id,title\n" + fits + b"\n" + b"b," + b"z" * 9 + b"\n"
                        + b'c,"quoted\n' + b"q" * 30 + b'\nend"\n' + b"d,Last\n")
    rows = list(open_source(catalog, max_row_bytes=10).rows())
    assert [(r.position, r.fields) for r in rows] == [
        (1, {"id": "a", "title": "yyyyyyyy"}), (2, None), (3, None),
        (4, {"id": "d", "title": "Last"})]
    assert rows[1].error.startswith("row too large: 11 bytes")
    assert rows[2].error.startswith("row too large: ")  # its quoted cell spans 3 lines
    with pytest.raises(InvalidInput, match=r"header .* not usable: row too large"):
        list(open_source(catalog, max_row_bytes=5).rows())


def write_config(path: Path, text_dir: Path, clip: bool = False) -> Path:
    """A TOML config on the tiny text model; ``clip`` adds the tiny random CLIP."""
    model = make_tiny_clip_settings().model
    clip_table = (f'[clip]\nmodel = "{model}"\npretrained = ""\nrandom_weights = true\n'
                  if clip else '[clip]\npretrained = ""\n')
    path.write_text(f'device = "cpu"\nlog_level = "WARNING"\n{clip_table}[rerank]\nmodel = ""\n'
                    f'[text_encoder]\nmodel = "{text_dir}"\n'
                    f'[service]\nmax_image_bytes = {LIMIT}\n')
    return path


@pytest.mark.parametrize(("name", "data", "needle"), [
    ("catalog.jsonl", png_bytes(4) * 3, "is not UTF-8 text"),
    ("catalog.csv", bytes(range(256)) * 40, "is not UTF-8 text"),
    ("catalog.jsonl.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 40, "could not be read to the end"),
    ("catalog.bin", b"\x7fELF\x02\x01\x01" + b"\x00" * 100, "cannot tell the format"),
])
def test_binary_catalog_is_a_one_line_error(tmp_path: Path, tiny_text_dir: Path, name: str,
                                           data: bytes, needle: str) -> None:
    (tmp_path / name).write_bytes(data)
    config = write_config(tmp_path / "mmrec.toml", tiny_text_dir)
    result = runner.invoke(app, ["index", str(tmp_path / name), "--config", str(config),
                                 "--data-dir", str(tmp_path / "store"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and needle in line, line


def test_exit_status_follows_failed_rows_and_flags_reach_the_job(
        tmp_path: Path, tiny_text_dir: Path) -> None:
    """Failures above --max-failed exit 1; --allow-outside-paths, --column-type and
    --max-row-bytes change which rows pass."""
    config = write_config(tmp_path / "mmrec.toml", tiny_text_dir, clip=True)
    (tmp_path / "cat").mkdir()
    (tmp_path / "outside.png").write_bytes(png_bytes(5))
    catalog = tmp_path / "cat" / "c.csv"
    catalog.write_text("id,title,image,year\n1,One,,1999\n2,Two,../outside.png,2000\n"
                       f"3,Three,,abc\n4,{'Long ' * 300},,2001\n")
    letters = tmp_path / "dead.jsonl"
    base = ["index", str(catalog), "--config", str(config), "--data-dir", str(tmp_path / "s"),
            "--no-progress", "--dead-letter", str(letters), "--column-type", "year=int",
            "--max-row-bytes", "1000"]
    first = runner.invoke(app, base)
    assert first.exit_code == 1, first.output
    assert "indexed 1 items, failed 3 rows" in first.stdout
    [line] = [x for x in first.stderr.splitlines() if x.startswith("failed: ")]
    assert line.startswith("failed: 75.0% of the rows failed (3 of 4), more than --max-failed 0.1")
    reasons = {row: d["reason"] for row, d in dead_letters(letters).items()}
    assert reasons[2].startswith("image outside the catalog folder")
    assert reasons[3] == "column 'year' is typed int: 'abc' is not an int"
    assert reasons[4].startswith("row too large: 1,5")
    second = runner.invoke(app, [*base, "--allow-outside-paths", "--max-failed", "0.5"])
    assert second.exit_code == 0, second.output
    assert "indexed 2 items, failed 2 rows" in second.stdout and "failed:" not in second.stderr
    assert sorted(dead_letters(letters)) == [3, 4]
    catalog.write_text("id,year\n1,1999\n2,2000\n")  # neither title nor text nor image
    third = runner.invoke(app, base)
    assert third.exit_code == 1
    assert "failed: every row failed (2 of 2), nothing was indexed" in third.stderr


def test_csv_cells_are_typed_per_column_and_ids_stay_strings(
        engine: Engine, tiny_config: EngineConfig, tmp_path: Path) -> None:
    catalog = tmp_path / "c.csv"
    catalog.write_text(
        "id,title,year,price,in_stock,zip,code,ratio,note\n"
        "1,One,1999,3,true,02134,5,NaN,\n"
        "2,Two,2001,2.5,FALSE,10001,7,0.5,1e3\n"
        "3,Three,,1e2,True,,X9,,x\n")
    source = open_source(catalog)
    rows = [r.fields for r in source.rows()]
    assert rows[0] == {"id": "1", "title": "One", "year": 1999, "price": 3.0, "in_stock": True,
                       "zip": "02134", "code": "5", "ratio": "NaN"}
    assert rows[1] == {"id": "2", "title": "Two", "year": 2001, "price": 2.5, "in_stock": False,
                       "zip": "10001", "code": "7", "ratio": "0.5", "note": "1e3"}
    assert rows[2] == {"id": "3", "title": "Three", "price": 100.0, "in_stock": True,
                       "code": "X9", "note": "x"}
    assert [r.fields for r in source.rows(1)] == rows[1:]  # a resumed run types alike
    forced = open_source(catalog, schema={"zip": "int", "year": "str", "ratio": "float"})
    typed = list(forced.rows())
    assert typed[0].fields is None
    assert typed[0].error == "column 'ratio' is typed float: 'NaN' is not a float"
    assert typed[1].fields and (typed[1].fields["zip"], typed[1].fields["year"]) == (10001, "2001")
    with pytest.raises(InvalidInput, match="'id' is always read as text"):
        open_source(catalog, schema={"id": "int"})
    with pytest.raises(InvalidInput, match="does not have: colour"):
        list(open_source(catalog, schema={"colour": "str"}).rows())
    summary, _ = index(tiny_config, engine, catalog, tmp_path)
    assert summary.indexed == 3
    [one] = engine.get(["1"], "default")
    assert one.attributes["year"] == 1999 and one.attributes["in_stock"] is True
