"""Configuration: defaults, TOML file, environment and keyword overrides, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.config import EngineConfig


def test_priority_kwargs_over_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    toml = tmp_path / "mmrec.toml"
    toml.write_text('device = "cpu"\n[service]\nport = 1111\ndefault_top_k = 7\n'
                    '[clip]\nenabled = false\n[channels]\ntext = 2.5\n')
    monkeypatch.setenv("MMREC_SERVICE__PORT", "2222")
    config = EngineConfig.load(toml, store={"data_dir": tmp_path / "d"})
    assert config.service.port == 2222
    assert config.service.default_top_k == 7
    assert config.clip.enabled is False and config.channels.text == 2.5
    assert config.store.data_dir == tmp_path / "d"
    assert EngineConfig.load(toml, service={"port": 3333}).service.port == 3333


def test_defaults_and_errors(tmp_path: Path) -> None:
    config = EngineConfig.load()
    assert (config.clip.model, config.clip.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert config.text_encoder.model == "all-MiniLM-L6-v2" and not config.clip.random_weights
    with pytest.raises(FileNotFoundError):
        EngineConfig.load(tmp_path / "missing.toml")
    with pytest.raises(ValidationError):
        EngineConfig.load(channels={"clip": -1})
    with pytest.raises(ValidationError):
        EngineConfig.load(no_such_setting=1)
