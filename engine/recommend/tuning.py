"""Choosing the fusion settings on a catalog's own validation split, and keeping the choice.

The defaults of the ``recommend`` section (weights, RRF k, fusion) were chosen
on MovieLens-100k; another catalog may want others, or no content channel at
all. :func:`tune_fusion` takes the channel lists of
:class:`engine.recommend.offline.OfflineFirstStage` for validation histories
(computed once) and scores every setting of a :class:`FusionGrid` by the mean
NDCG@10 of the held-out items, in numpy: one setting costs a few milliseconds
per thousand users. The configured settings are scored first, so they are kept
on a tie, and kept too unless the best setting leads them by two standard errors
of the paired per-user gain (the transfer benchmark,
``benchmarks/results/fusion_transfer.md``, showed the plain argmax of 343
settings over a few hundred users picking noise). The result, a
:class:`TunedFusion`, says what was chosen, the NDCG of each channel alone, of
the defaults and of the choice, the grid size and the seconds spent;
``mmrec train-seq`` writes it beside the behaviour models as
``fusion.json`` and the engine applies it (:meth:`TunedFusion.apply`) to the
recommendations of the tenant it was tuned on (``TunedFusion.tenant``) only.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import RecommendSettings
from engine.domain import DEFAULT_TENANT, InvalidInput, ModelUnavailable
from engine.evaluation import mean_metrics, metrics_from_ranks
from engine.recommend.offline import (
    FusionSettings,
    OfflineFirstStage,
    UserLists,
    dbsf_normalise,
    rrf_contributions,
)

__all__ = ["FUSION_FILE", "FusionGrid", "FusionScorer", "TunedFusion", "paired_z", "tune_fusion"]

FUSION_FILE = "fusion.json"
"""The tuned settings' file in the behaviour models' folder."""
FORMAT_VERSION = 1
_RETUNE = "run mmrec train-seq again"


@dataclass(frozen=True, slots=True)
class FusionGrid:
    """The settings searched: every weight combination (0 = off) per RRF k, and DBSF subsets.

    With the three history channels the default grid holds each channel alone
    (3), the 112 weight combinations with two or more channels on per RRF k
    (3 values: 336), and the 4 DBSF subsets of two or more channels: 343 settings.
    """

    weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    rrf_k: tuple[int, ...] = (10, 30, 60)
    dbsf: bool = True

    def settings(self, channels: Sequence[str]) -> list[FusionSettings]:
        """Every distinct setting over ``channels``: RRF by k, then DBSF; never all off.

        A setting with one channel on is that channel's own ranking whatever its
        weight, k or fusion, so it appears once (weight 1, the first k).
        """
        combos = [dict(zip(channels, ws, strict=True))
                  for ws in itertools.product(self.weights, repeat=len(channels))
                  if sum(w > 0 for w in ws) > 1]
        alone = [FusionSettings({c: float(c == one) for c in channels}, self.rrf_k[0])
                 for one in channels if any(w > 0 for w in self.weights)]
        out = [FusionSettings(weights=w, rrf_k=k, fusion="rrf")
               for k in self.rrf_k for w in combos]
        if self.dbsf:
            subsets = {tuple(c for c in channels if w[c] > 0) for w in combos}
            out += [FusionSettings(weights={c: float(c in on) for c in channels}, fusion="dbsf")
                    for on in sorted(subsets, key=lambda s: (len(s), s))]
        return alone + out


class FusionScorer:
    """Validation users' channel lists, laid out so that any setting is scored at once.

    Per user, the union of its channels' lists in first-appearance order; per
    union item and channel its position (``L`` = absent) and DBSF-normalised
    score. A setting's fused scores are then a gather and a sum; the target's
    rank counts the present items that beat it, ties going to the earlier one
    (first appearance among the active channels), exactly as
    :meth:`OfflineFirstStage.fuse` orders them.
    """

    def __init__(self, channels: Sequence[str], lists: Sequence[UserLists],
                 targets: Sequence[int]) -> None:
        if len(lists) != len(targets):
            raise InvalidInput("one target per user's lists is needed")
        self.channels = list(channels)
        self.length = max((len(c.items) for u in lists for c in u.channels.values()), default=1)
        width = max((len(set(np.concatenate([c.items for c in u.channels.values()]).tolist()))
                     for u in lists if u.channels), default=1)
        users, n_channels = len(lists), len(self.channels)
        self.positions = np.full((users, width, n_channels), self.length, np.int32)
        self.normalised = np.zeros((users, width, n_channels), np.float32)
        self.target = np.full(users, -1, np.int64)
        self._appearances: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        for u, (user, target) in enumerate(zip(lists, targets, strict=True)):
            self._lay_out(u, user, int(target))

    def _lay_out(self, u: int, user: UserLists, target: int) -> None:
        """Fill user ``u``'s row of the position and score tables."""
        slot: dict[int, int] = {}
        for c, name in enumerate(self.channels):
            channel = user.channels.get(name)
            if channel is None:
                continue
            normalised = dbsf_normalise(channel.scores)
            for position, item in enumerate(channel.items.tolist()):
                j = slot.setdefault(item, len(slot))
                self.positions[u, j, c] = position
                self.normalised[u, j, c] = normalised[position]
        self.target[u] = slot.get(target, -1)

    def ranks(self, settings: FusionSettings) -> np.ndarray:
        """Each user's 1-based rank of its target in the fused list (``inf``: not there)."""
        active = tuple(c for c, name in enumerate(self.channels) if settings.weight(name) > 0)
        users = np.arange(len(self.target))
        if not active:
            return np.full(len(users), np.inf)
        present, first = self._appearance(active)
        scores = np.zeros(self.positions.shape[:2], np.float32)
        for c in active:  # summed in channel order, as the store does
            if settings.fusion == "rrf":
                table = np.append(rrf_contributions(
                    self.length, settings.weight(self.channels[c]), settings.rrf_k),
                    np.float32(0.0))
                scores += table[self.positions[:, :, c]]
            else:
                scores += self.normalised[:, :, c]
        target = np.maximum(self.target, 0)
        own, own_first = scores[users, target][:, None], first[users, target][:, None]
        beaten = present & ((scores > own) | ((scores == own) & (first < own_first)))
        ranks = beaten.sum(axis=1).astype(np.float64) + 1.0
        found = (self.target >= 0) & present[users, target]
        return np.where(found, ranks, np.inf)

    def _appearance(self, active: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Which union items the active channels hold, and each one's first appearance.

        First appearance is ``channel * L + position`` in the earliest active
        channel holding the item (the tie order of ``fuse``). Cached per channel
        set: a grid has few of them.
        """
        if active not in self._appearances:
            present = np.zeros(self.positions.shape[:2], bool)
            first = np.full(self.positions.shape[:2], np.iinfo(np.int32).max, np.int32)
            for c in reversed(active):
                positions = self.positions[:, :, c]
                here = positions < self.length
                present |= here
                first = np.where(here, c * self.length + positions, first)
            self._appearances[active] = present, first
        return self._appearances[active]

    def per_user(self, settings: FusionSettings, k: int = 10) -> np.ndarray:
        """Each user's NDCG@k under ``settings``."""
        return metrics_from_ranks(self.ranks(settings), ks=(k,))[f"NDCG@{k}"]

    def ndcg(self, settings: FusionSettings, k: int = 10) -> float:
        """Mean NDCG@k of the targets under ``settings``."""
        if not len(self.target):
            return float("nan")
        return mean_metrics({"ndcg": self.per_user(settings, k)})["ndcg"]


def paired_z(better: np.ndarray, base: np.ndarray) -> float:
    """How many standard errors the mean per-user gain of ``better`` over ``base`` is.

    The paired z statistic ``mean(d) / (std(d) / sqrt(n))`` of ``d = better - base``;
    0 when they never differ, ``inf`` when they differ by a constant gain.
    """
    gain = np.asarray(better, np.float64) - np.asarray(base, np.float64)
    if len(gain) < 2 or not np.any(gain):
        return 0.0
    se = float(gain.std(ddof=1)) / np.sqrt(len(gain))
    return float(gain.mean() / se) if se > 0 else float(np.sign(gain.mean()) * np.inf)


@dataclass(frozen=True)
class TunedFusion:
    """The settings chosen on validation, and what the choice rests on.

    ``settings`` are what the engine applies: ``best``, the grid's best, when it
    beat the defaults by at least ``min_z`` standard errors of the paired per-user
    gain (``z``), else the defaults: with a few hundred validation users and
    hundreds of settings, a smaller lead is mostly the noise the search picked.
    """

    settings: FusionSettings
    valid_ndcg: float
    """Mean validation NDCG@10 of ``settings``."""
    best: FusionSettings
    best_ndcg: float
    z: float
    """The paired z of ``best`` over the defaults (per-user NDCG@10 gains)."""
    min_z: float
    alone: dict[str, float]
    """Validation NDCG@10 of each channel alone."""
    defaults_ndcg: float
    """Validation NDCG@10 of the configured (default) settings."""
    defaults: FusionSettings
    users: int
    """Validation users scored (after any subsampling)."""
    grid_size: int
    seconds: float
    """The whole search: channel lists and every setting."""
    notes: dict[str, Any] = field(default_factory=dict)
    tenant: str = DEFAULT_TENANT
    """The tenant whose log and models it was tuned on: the only one it applies to (a file
    without one, from before fusions were bound to a tenant, is the default tenant's)."""

    def apply(self, recommend: RecommendSettings) -> RecommendSettings:
        """The ``recommend`` settings with these weights (over the others), k and fusion."""
        return recommend.model_copy(update={
            "weights": {**recommend.weights, **self.settings.weights},
            "rrf_k": self.settings.rrf_k, "fusion": self.settings.fusion})

    @property
    def kept_defaults(self) -> bool:
        """Whether the grid's best did not beat the defaults clearly enough to replace them."""
        return self.settings == self.defaults

    def choice(self) -> str:
        """The settings applied, and why when they are the defaults."""
        if not self.kept_defaults or self.best == self.defaults:
            return self.settings.describe()
        return (f"{self.settings.describe()} (the defaults: the best, "
                f"{self.best.describe()} at {self.best_ndcg:.4f}, led by {self.z:.1f} "
                f"standard errors < {self.min_z:g})")

    def summary(self) -> str:
        """One line for people: the choice and the validation NDCG it rests on."""
        alone = ", ".join(f"{name} {ndcg:.4f}" for name, ndcg in self.alone.items())
        return (f"{self.choice()}; validation NDCG@10 {self.valid_ndcg:.4f} "
                f"(defaults {self.defaults_ndcg:.4f}; alone: {alone}); {self.grid_size} "
                f"settings on {self.users} users in {self.seconds:.1f} s")

    def details(self) -> dict[str, str]:
        """What ``mmrec info`` shows, as strings."""
        alone = ", ".join(f"{name} {ndcg:.4f}" for name, ndcg in self.alone.items())
        return {
            "fusion": self.choice(),
            "valid_ndcg@10": f"{self.valid_ndcg:.4f} (defaults {self.defaults_ndcg:.4f})",
            "valid_ndcg@10 alone": alone,
            "search": f"{self.grid_size} settings on {self.users} users in {self.seconds:.1f} s",
            "tenant": self.tenant,
        }

    def to_json(self) -> dict[str, Any]:
        """The file's contents."""
        data = asdict(self)
        for name in ("settings", "defaults", "best"):
            data[name] = getattr(self, name).to_json()
        return {"format": FORMAT_VERSION, **data}

    def save(self, path: Path) -> None:
        """Write ``path`` (JSON) atomically enough for one writer: a temp file, then a rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        temp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TunedFusion:
        """A saved record; ``ModelUnavailable`` saying what to do when it is unreadable."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {data.get('format')!r}, this mmrec reads "
                                 f"{FORMAT_VERSION}")
            return cls(settings=FusionSettings.from_json(data["settings"]),
                       valid_ndcg=float(data["valid_ndcg"]),
                       best=FusionSettings.from_json(data["best"]),
                       best_ndcg=float(data["best_ndcg"]), z=float(data["z"]),
                       min_z=float(data["min_z"]),
                       alone={str(k): float(v) for k, v in data["alone"].items()},
                       defaults_ndcg=float(data["defaults_ndcg"]),
                       defaults=FusionSettings.from_json(data["defaults"]),
                       users=int(data["users"]), grid_size=int(data["grid_size"]),
                       seconds=float(data["seconds"]), notes=dict(data.get("notes", {})),
                       tenant=str(data.get("tenant", DEFAULT_TENANT)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidInput) as exc:
            raise ModelUnavailable(f"tuned fusion settings in {path} are unusable ({exc}); "
                                   f"{_RETUNE}") from exc


def tune_fusion(stage: OfflineFirstStage, histories: Sequence[Sequence[str]],
                targets: Sequence[str], defaults: FusionSettings, *,
                grid: FusionGrid | None = None, k: int = 10, min_z: float = 2.0) -> TunedFusion:
    """The grid's best setting by mean validation NDCG@k, if it clearly beats the defaults.

    Histories whose target is not in the stage's catalog cannot be scored and
    are left out (``notes["unscorable"]`` counts them). The ``defaults`` are
    scored first, so they win a tie, and are kept unless the best leads them by
    ``min_z`` standard errors of the paired per-user gain (:class:`TunedFusion`);
    each channel alone is scored too.
    """
    started = time.perf_counter()
    pairs = [(h, stage.index[t]) for h, t in zip(histories, targets, strict=True)
             if t in stage.index]
    if not pairs:
        raise InvalidInput("no validation target is in the catalog: nothing to tune on")
    lists = stage.channel_lists([h for h, _ in pairs])
    scorer = FusionScorer(stage.channels, lists, [t for _, t in pairs])
    defaults = FusionSettings({c: defaults.weight(c) for c in stage.channels},
                              defaults.rrf_k, defaults.fusion)
    candidates = [defaults, *(grid or FusionGrid()).settings(stage.channels)]
    scores = [scorer.ndcg(s, k) for s in candidates]
    best = candidates[int(np.argmax(scores))]  # the first of equals: the defaults on a tie
    z = paired_z(scorer.per_user(best, k), scorer.per_user(defaults, k))
    chosen = best if z >= min_z else defaults
    alone = {c: scorer.ndcg(FusionSettings({o: float(o == c) for o in stage.channels}), k)
             for c in stage.channels}
    return TunedFusion(
        settings=chosen, valid_ndcg=round(scorer.ndcg(chosen, k), 6), best=best,
        best_ndcg=round(max(scores), 6), z=round(z, 3), min_z=min_z,
        alone={c: round(v, 6) for c, v in alone.items()},
        defaults_ndcg=round(scores[0], 6), defaults=defaults, users=len(pairs),
        grid_size=len(candidates) - 1, seconds=round(time.perf_counter() - started, 2),
        notes={"unscorable": len(histories) - len(pairs), "k": k}, tenant=stage.tenant)
