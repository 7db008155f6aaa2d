"""Every benchmark result says what produced it (issue 13): data, models and whether their
weights are real or random, store, device, beside the machine, versions, commit and date.

``report.write`` (and the two savers built on it) take a required ``Provenance``; the static
check below parses every module under ``benchmarks/`` and fails when a call to one of them
does not pass ``provenance=``, so a new benchmark cannot leave it out. Nothing here loads a
model or runs a benchmark.
"""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report
from benchmarks import synthetic_store as synth
from benchmarks.soak import output as soak_output
from engine.domain import EngineInfo, ModelStatus

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SAVERS = {"benchmarks.report.write", "benchmarks.synthetic_store.save",
          "benchmarks.soak.output.save"}
"""The functions that write a result file, by qualified name."""

MADE = report.Provenance(
    "MovieLens-100k, 943 users, 1,682 films, leave-one-out test",
    {"text encoder": report.real_weights("all-MiniLM-L6-v2"),
     "CLIP": report.random_weights("open_clip ViT-B-32")},
    report.edge_store(), "cpu")


# -- what a result file holds -----------------------------------------------------------------

def _written(json_path: Path, md_path: Path) -> tuple[dict, str]:
    return json.loads(json_path.read_text()), md_path.read_text()


def test_write_stores_the_provenance_beside_the_machine_and_prints_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)  # where write() goes by default
    saved, md = _written(*report.write("demo", {"rows": [1]}, "# Demo\n\n| a |",
                                       provenance=MADE))
    assert list(saved)[:3] == ["machine", "provenance", "rows"]
    assert saved["provenance"] == {
        "data": "MovieLens-100k, 943 users, 1,682 films, leave-one-out test",
        "models": {"text encoder": "all-MiniLM-L6-v2 (real weights)",
                   "CLIP": "open_clip ViT-B-32 (random weights)"},
        "store": f"EdgeStore, qdrant-edge-py {report._version('qdrant-edge-py')}",
        "device": "cpu"}
    machine = saved["machine"]  # versions, commit and date stay there
    assert machine["commit"] and machine["when"] and machine["python"] and machine["torch"]
    assert machine["packages"]["qdrant-edge-py"] == report._version("qdrant-edge-py")
    line = ("Data: MovieLens-100k, 943 users, 1,682 films, leave-one-out test. Models: text "
            "encoder: all-MiniLM-L6-v2 (real weights); CLIP: open_clip ViT-B-32 (random "
            f"weights). Store: {MADE.store}. Device: cpu.")
    assert md.startswith("# Demo\n\n| a |\n\n" + line + "\n\nMeasured at commit ")


def test_write_to_another_folder_and_a_file_without_models(tmp_path: Path) -> None:
    bare = report.Provenance("synthetic vectors, 10,000 items", {}, report.NONE, "cpu")
    saved, md = _written(*report.write("bare", {}, "# Bare", provenance=bare,
                                       out=tmp_path / "elsewhere"))
    assert saved["provenance"]["models"] == {} and saved["provenance"]["store"] == "none"
    assert "Models: none. Store: none. Device: cpu." in md


def test_a_blank_field_is_refused() -> None:
    with pytest.raises(ValueError, match="device"):
        report.Provenance("some data", {}, "none", " ")
    with pytest.raises(ValueError, match="models"):
        report.Provenance("some data", {"LLM": ""}, "none", "cpu")


def test_the_savers_stamp_the_same_way(tmp_path: Path) -> None:
    made = synth.store_provenance({"single": [10_000, 30_000], "fused": [10_000]})
    assert made.models == {} and made.store == report.edge_store() and made.device == "cpu"
    assert "single layout (one 512-d vector) at 10,000, 30,000 items" in made.data
    assert "fused layout" in made.data and f"seed {synth.SEED}" in made.data
    path = synth.save(tmp_path, "scale", {"rows": []}, "# Scale", provenance=made)
    assert json.loads(path.read_text())["provenance"] == made.as_json()
    json_path, md_path = soak_output.save(tmp_path / "soak", {"run": {}}, "# Soak",
                                          provenance=MADE)
    assert json.loads(json_path.read_text())["provenance"]["device"] == "cpu"
    assert MADE.line() in md_path.read_text()


def test_an_engines_models_store_and_device_come_from_its_info() -> None:
    info = EngineInfo(version="0", device="cpu", store="qdrant-edge 0.9.0 shard at data/shard",
                      item_count=3, models=[
        ModelStatus("text", "transformers all-MiniLM-L6-v2 (mean pooling)", True),
        ModelStatus("clip", "open_clip ViT-B-32 random weights", True),
        ModelStatus("lexical", "bm25 (english)", True),
        ModelStatus("llm", "SmolLM2-135M-Instruct.Q4_1.gguf", True),
        ModelStatus("reranker", "", False, "none trained"),
        ModelStatus("behaviour", "SASRec at data/seq", True),
        ModelStatus("fusion", "tuned on validation (data/fusion.json)", True)])
    made = report.from_engine(info, "Tux Paint stamps", {"SASRec": "trained here"})
    assert made.models == {
        "text encoder": "transformers all-MiniLM-L6-v2 (mean pooling) (real weights)",
        "CLIP": "open_clip ViT-B-32 (random weights)",
        "lexical": "bm25 (english), no learned weights",
        "LLM re-ranker": "SmolLM2-135M-Instruct.Q4_1.gguf (real weights)",
        "SASRec": "trained here"}
    assert made.store == report.edge_store() and made.device == "cpu"
    assert "data/" not in json.dumps(made.as_json())  # the measuring machine's paths stay there
    off = EngineInfo("0", "cpu", "qdrant server http://q:6333, collection items", 0,
                     [ModelStatus("clip", "open_clip ViT-B-32", False, "no weights")])
    assert report.engine_models(off) == {"CLIP": "off"}
    assert report.store_name(off.store).startswith("Qdrant server store, qdrant-client ")
    assert report.engine_models(EngineInfo("0", "cpu", "x", 0, [ModelStatus(
        "clip", "open_clip ViT-B-32 laion2b_s34b_b79k", True)])) == {
        "CLIP": "open_clip ViT-B-32 laion2b_s34b_b79k (real weights)"}


def test_capacity_names_the_results_it_reads() -> None:
    from argparse import Namespace

    from benchmarks import capacity

    if not (report.COMMITTED / "scale.json").is_file():
        pytest.skip("no committed scale.json")
    made = capacity.provenance(capacity.inputs(), Namespace(items=100_000_000, qps=5000.0))
    assert made.data.startswith("measured results (scale.json")
    assert "100,000,000 items" in made.data and made.device.startswith("none")
    assert "EdgeStore" in made.store


def test_split_describes_itself() -> None:
    from benchmarks.recommend.protocol import Interactions, protocol_split

    seqs = [np.arange(4, dtype=np.int64), np.arange(1, 5, dtype=np.int64)]
    data = Interactions([str(i) for i in range(5)], ["u1", "u2"], seqs,
                        [np.arange(4, dtype=np.float64)] * 2)
    assert protocol_split(data).describe() == (
        "MovieLens-100k, 2 users, 5 films, 8 interactions, leave-one-out by time")


# -- the static check: every call passes provenance= -------------------------------------------

def _module(path: Path) -> str:
    """The dotted module name of a file under benchmarks/."""
    parts = path.relative_to(BENCHMARKS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _aliases(tree: ast.Module, module: str) -> dict[str, str]:
    """Local name -> qualified name: imports (``from benchmarks import report``, ``import
    benchmarks.report as r``, ``from benchmarks.report import write as w``) and the module's
    own top-level functions."""
    names = {node.name: f"{module}.{node.name}" for node in tree.body
             if isinstance(node, ast.FunctionDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        elif isinstance(node, ast.Import):
            for a in node.names:  # "import a.b" binds a; "import a.b as c" binds c to a.b
                head = a.name.split(".")[0]
                names.update({a.asname: a.name} if a.asname else {head: head})
    return names


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)) is not None:
        return f"{base}.{node.attr}"
    return None


def saver_calls(source: str, module: str) -> list[tuple[int, str, bool]]:
    """Each call of a saver in ``source``: (line, qualified name, passes ``provenance=``)."""
    tree = ast.parse(source)
    names = _aliases(tree, module)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (dotted := _dotted(node.func)) is not None:
            head, _, rest = dotted.partition(".")
            qualified = ".".join(p for p in (names.get(head, head), rest) if p)
            if qualified in SAVERS:
                found.append((node.lineno, qualified,
                              any(k.arg == "provenance" for k in node.keywords)))
    return found


def test_the_check_finds_calls_in_every_form_and_flags_a_missing_provenance() -> None:
    source = ("from benchmarks import report, synthetic_store as synth\n"
              "from benchmarks.report import write as w\nimport benchmarks.soak.output\n"
              "w('a', {}, '', provenance=p)\nreport.write('b', {}, '')\n"
              "synth.save(d, 'c', {}, '', provenance=p)\n"
              "benchmarks.soak.output.save(d, {}, '')\nwriter.write(x)\nsave(x)\n")
    assert saver_calls(source, "benchmarks.demo") == [
        (4, "benchmarks.report.write", True), (5, "benchmarks.report.write", False),
        (6, "benchmarks.synthetic_store.save", True),
        (7, "benchmarks.soak.output.save", False)]


def test_every_benchmark_passes_provenance_to_every_write() -> None:
    calls = {path: saver_calls(path.read_text(), _module(path))
             for path in sorted(BENCHMARKS.rglob("*.py")) if "results" not in path.parts}
    missing = [f"{path.relative_to(BENCHMARKS.parent)}:{line} {name}(...)"
               for path, found in calls.items() for line, name, ok in found if not ok]
    assert not missing, "these calls write results without provenance=: " + ", ".join(missing)
    writers = {path.stem for path, found in calls.items() if found}
    assert len(writers) >= 20, writers  # the check sees the benchmarks (it is not blind)
    assert {"capacity", "scale", "indexing_ray", "output", "synthetic_store"} <= writers


@pytest.mark.parametrize("saver", [report.write, synth.save, soak_output.save])
def test_provenance_is_a_required_keyword(saver: Callable[..., object]) -> None:
    parameter = inspect.signature(saver).parameters["provenance"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
    assert parameter.default is inspect.Parameter.empty
