"""A trained sequential model as the engine uses it: item vectors, query vectors, a folder.

The store ranks by cosine similarity, the model by dot product. The exact
MIPS-to-cosine transform (Bachrach et al., 2014) makes the two agree: with
``M`` the largest item-embedding norm, an item's vector is
``[e_j, sqrt(M² - |e_j|²)] / M`` and a query's is ``[h, 0] / |h|``. Both have
unit length, and their cosine is ``h·e_j / (|h| M)``: for any one query, the
model's dot-product scores times a positive constant, so Qdrant's cosine
nearest neighbours are exactly the model's top items. Vectors therefore have
``dim + 1`` components.

A model folder holds ``weights.safetensors`` and ``model.json`` (vocabulary,
settings, format version, training facts, and the tenant whose log trained it:
the engine serves the model to that tenant only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engine.behaviour.mips import mips_items, mips_queries
from engine.behaviour.sequential.model import PAD, SasRec
from engine.behaviour.sequential.settings import SequentialSettings
from engine.domain import DEFAULT_TENANT, ModelUnavailable

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"
_RETRAIN = "train it again with `mmrec train-seq`"


@dataclass(frozen=True, slots=True)
class TrainingFacts:
    """What happened in training, kept with the model for people and benchmarks."""

    epochs_run: int = 0
    best_epoch: int = 0
    best_valid_ndcg: float | None = None
    """Validation NDCG@10 of the kept weights; None when trained without validation."""
    refit_epochs: int = 0
    """Epochs of the final run on every item, held-out ones included (0: no refit); the
    served weights are then that run's, and ``best_valid_ndcg`` describes the search run."""
    train_seconds: float = 0.0
    n_sequences: int = 0
    n_items: int = 0


class SequentialModel:
    """A trained :class:`SasRec` with its item-id vocabulary, settings and training facts.

    Item ``item_ids[i]`` has embedding row ``i + 1`` (row 0 is padding). All
    inference runs in eval mode without gradients.
    """

    def __init__(self, network: SasRec, item_ids: Sequence[str], settings: SequentialSettings,
                 facts: TrainingFacts | None = None, *, tenant: str = DEFAULT_TENANT) -> None:
        if network.n_items != len(item_ids):
            raise ValueError(f"network has {network.n_items} items, vocabulary {len(item_ids)}")
        self.network = network.eval()
        self.item_ids: list[str] = list(item_ids)
        self.settings = settings
        self.facts = facts or TrainingFacts(n_items=len(item_ids))
        self.tenant = tenant
        """The tenant whose interaction log trained the model: the only one it serves."""
        self._index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        if len(self._index) != len(self.item_ids):
            raise ValueError("item ids must be unique")

    @property
    def vector_dim(self) -> int:
        """Length of item and query vectors: the model dimension plus one."""
        return self.settings.dim + 1

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return self.network.item_embedding.weight.device

    def item_vectors(self) -> tuple[list[str], np.ndarray]:
        """Item ids and their unit vectors [n, dim + 1] (float32) for the ``behaviour`` channel."""
        with torch.no_grad():
            table = self.network.item_table().detach().cpu().double().numpy()
        return list(self.item_ids), mips_items(table)

    def index_histories(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """Left-padded item indices [b, L] of the latest known items of each history.

        Unknown ids (items added after training) are skipped; at most ``max_len``
        of the newest known items are kept. ``L`` is the longest kept history
        (at least 1); an all-padding row means nothing known.
        """
        rows = []
        for history in histories:
            known = [self._index[item] for item in history if item in self._index]
            rows.append(known[-self.settings.max_len:])
        width = max((len(r) for r in rows), default=0) or 1
        padded = np.full((len(rows), width), PAD, dtype=np.int64)
        for i, row in enumerate(rows):
            if row:
                padded[i, width - len(row):] = row
        return torch.from_numpy(padded).to(self.device)

    def hidden(self, histories: Sequence[Sequence[str]], batch_size: int = 512) -> np.ndarray:
        """Raw query states [b, dim] (float32); zero for histories with no known item."""
        out = np.zeros((len(histories), self.settings.dim), np.float32)
        with torch.no_grad():
            for start in range(0, len(histories), batch_size):
                items = self.index_histories(histories[start:start + batch_size])
                hidden = self.network.last_hidden(items)
                hidden = hidden * (items[:, -1:] != PAD)
                out[start:start + len(items)] = hidden.float().cpu().numpy()
        return out

    def encode(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Unit query vectors [b, dim + 1] (float32) of histories (item ids, oldest first).

        A history with no known item gives a zero row: the behaviour channel has
        nothing to say about that user.
        """
        return mips_queries(self.hidden(histories))

    def scores(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Dot-product logits [b, n_items] (float32), columns in ``item_ids`` order.

        For fast full ranking in benchmarks; rows of unknown histories are zero.
        """
        hidden = torch.from_numpy(self.hidden(histories)).to(self.device)
        with torch.no_grad():
            return self.network.logits(hidden).float().cpu().numpy()

    def save(self, folder: Path) -> None:
        """Write the weights and ``model.json`` into ``folder`` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        meta = {"format_version": FORMAT_VERSION, "kind": "sasrec",
                "settings": self.settings.to_dict(), "facts": asdict(self.facts),
                "tenant": self.tenant, "item_ids": self.item_ids}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> SequentialModel:
        """Read a model written by :meth:`save`; raises ModelUnavailable if it cannot be used.

        A ``model.json`` without a ``tenant`` (written before models were bound to
        one) is read as the default tenant's, train-seq's default; one trained then
        with ``--tenant`` must be trained again to serve its tenant.
        """
        folder = Path(folder)
        meta = _read_meta(folder)
        try:
            settings = SequentialSettings.from_dict(meta["settings"])
            facts = TrainingFacts(**meta.get("facts", {}))
            item_ids = [str(i) for i in meta["item_ids"]]
            tenant = str(meta.get("tenant", DEFAULT_TENANT))
            network = build_network(len(item_ids), settings)
            network.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device="cpu"))
        except FileNotFoundError as exc:
            raise ModelUnavailable(
                f"sequential model in {folder} has no {WEIGHTS_FILE}; {_RETRAIN}") from exc
        except Exception as exc:  # corrupt weights, wrong shapes, bad settings
            raise ModelUnavailable(
                f"sequential model in {folder} is unreadable ({type(exc).__name__}: {exc}); "
                f"{_RETRAIN}") from exc
        return cls(network.to(device), item_ids, settings, facts, tenant=tenant)


def build_network(n_items: int, settings: SequentialSettings) -> SasRec:
    """The untrained network these settings describe, for ``n_items`` items."""
    return SasRec(n_items, dim=settings.dim, layers=settings.layers, heads=settings.heads,
                  max_len=settings.max_len, dropout=settings.dropout,
                  norm_first=settings.norm_first,
                  attention_dropout=settings.attention_dropout)


def _read_meta(folder: Path) -> dict[str, Any]:
    """``model.json`` of a model folder, checked for the format this code reads."""
    path = folder / META_FILE
    if not folder.is_dir():
        raise ModelUnavailable(f"no sequential model at {folder}: the folder does not exist; "
                               f"{_RETRAIN} or point the engine at the right folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelUnavailable(f"{folder} is not a sequential model folder (no {META_FILE}); "
                               f"{_RETRAIN}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelUnavailable(f"{path} is corrupt ({exc}); {_RETRAIN}") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ModelUnavailable(
            f"{path} has format version {version!r}, this mmrec reads {FORMAT_VERSION}; "
            f"{_RETRAIN}")
    return meta
