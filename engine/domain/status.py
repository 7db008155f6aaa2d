"""What the engine reports about itself: models, channels, counts (`mmrec info`, GetInfo)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """Whether a model is loaded, under which name, and why not when it is not.

    ``details`` holds what else a person may want to know, as text (the tuned
    fusion: the settings chosen and the validation NDCG of each channel).
    """

    role: str
    name: str
    loaded: bool
    reason: str = ""
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One named vector: size, weight in the fused vector, and whether it is filled."""

    name: str
    dim: int
    weight: float
    enabled: bool


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What `mmrec info` shows."""

    version: str
    device: str
    store: str
    item_count: int
    models: list[ModelStatus] = field(default_factory=list)
    channels: list[ChannelStatus] = field(default_factory=list)
