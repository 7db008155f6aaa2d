"""Settings of the behavioural channel's sequential model: architecture and training.

One frozen dataclass, saved with every trained model, so a model folder says
exactly how it was made and how to rebuild its network. The defaults are the
best by validation NDCG@10 of the settings measured on MovieLens-100k
(leave-one-out by time, full ranking); see :mod:`engine.behaviour.sequential.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from engine.domain import InvalidInput

Window = Literal["latest", "random"]


@dataclass(frozen=True, slots=True)
class SequentialSettings:
    """How the SASRec-style model is built and trained.

    ``max_len`` bounds the events the model sees per user, both in training and
    when encoding a history. ``window`` picks the training slice of a longer
    sequence: ``"latest"`` always takes its last ``max_len`` steps, ``"random"``
    draws a fresh slice each epoch, so early events are seen too. ``threads``
    None leaves torch's thread count alone.
    """

    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.5
    """Dropout on embeddings, residual branches and the feed-forward hidden layer."""
    attention_dropout: float = 0.5
    """Dropout on attention weights: it helps on small logs, but takes torch off its fused
    attention kernel (about 40% more time per epoch on CPU); 0 trains faster."""
    norm_first: bool = True
    """Pre-LN blocks (LayerNorm before attention and feed-forward); False gives post-LN."""
    window: Window = "latest"
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 300
    patience: int = 30
    """Epochs without a better validation NDCG@10 before training stops."""
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        problems = []
        if self.dim < 1 or self.layers < 0 or self.heads < 1 or self.max_len < 1:
            problems.append("dim, heads and max_len must be positive and layers >= 0")
        if self.dim % self.heads:
            problems.append(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attention_dropout < 1.0):
            problems.append("dropout and attention_dropout must be in [0, 1)")
        if self.window not in ("latest", "random"):
            problems.append(f"window must be 'latest' or 'random', got {self.window!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.patience < 1:
            problems.append("lr, batch_size, epochs and patience must be positive")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be positive or None, got {self.threads}")
        if problems:
            raise InvalidInput("invalid sequential model settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-ready values."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SequentialSettings:
        """Settings from :meth:`to_dict` output; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
