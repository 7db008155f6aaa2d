"""Training of the SASRec-style model on an interaction log: sequences in, SequentialModel out.

Each user's sequence (item ids, oldest first) is one training example per
epoch: the model reads ``seq[:-1]`` and predicts ``seq[1:]`` at every step with
a full-softmax cross-entropy loss. With held-out next items, every epoch is
scored by NDCG@10 over a full ranking of all items (the user's own items
masked), the best epoch's weights are kept and training stops after
``patience`` epochs without improvement. The held-out items
(:func:`validation_split`), the ranks and the NDCG are those of
:mod:`engine.evaluation`, the same code the benchmarks measure with.

The default settings are the best by validation NDCG@10 of those measured on
MovieLens-100k (the protocol of ``benchmarks.recommend``: leave-one-out by time,
full ranking; 2 layers, 64-d, batch 64, lr 2e-3, dropout 0.5; seed 0, CPU;
validation / test NDCG@10):

- max_len 200, 1 head, no attention dropout (the old default): 0.098 / 0.084
- max_len 50, 1 head, no attention dropout: 0.100 / 0.080
- max_len 50, 1 head, attention dropout 0.5: 0.116 / 0.094
- the same with max_len 30 / 100: 0.100 / 0.078, 0.110 / 0.091
- the same with dropout 0.6 (both): 0.101 / 0.086
- the same with post-LN instead of pre-LN: 0.108 / 0.088
- the same with batch 128, lr 1e-3: 0.106 / 0.089
- random windows instead of the latest (max_len 200): 0.085 / 0.056
- max_len 50, 2 heads, attention dropout 0.5 (the default): 0.120 / 0.088

Seed 1 gave 0.109 / 0.084 (1 head) and 0.115 / 0.087 (2 heads). Training with
early stopping runs about 230 epochs, 5 min on 2 CPU cores. Refitting on every
item for the best epoch count (``refit``) raised test NDCG@10 from 0.088 to
0.095 (+- 0.001 over seeds 0-2, ``benchmarks/results/recommend_quality.md``):
the held-out steps are each user's most recent, the most telling ones.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from engine.behaviour.sequential.artifact import SequentialModel, TrainingFacts, build_network
from engine.behaviour.sequential.model import PAD, SasRec
from engine.behaviour.sequential.settings import SequentialSettings, Window
from engine.domain import DEFAULT_TENANT, InvalidInput
from engine.evaluation import leave_one_out, mean_metrics, metrics_from_ranks, target_ranks

__all__ = ["SequentialSettings", "evaluate_next_item", "train_sequential", "validation_split"]

_EVAL_BATCH = 256


def validation_split(sequences: Sequence[Sequence[str]]
                     ) -> tuple[list[Sequence[str]], list[str | None]]:
    """Each user's last item held out for early stopping: (histories, targets) per user.

    The training parameters of :func:`engine.evaluation.leave_one_out`: one item
    held out, and only from users with three or more, so that every split user
    keeps two events (one training step); shorter users are trained on whole,
    with a None target. Feed the result to ``train_sequential(histories,
    valid_targets=targets)``.
    """
    split = leave_one_out(sequences, held_out=1, min_history=2, keep_short=True)
    targets = [held[0] if len(held) else None for held in split.held_out]
    return split.histories, targets


def train_sequential(sequences: Sequence[Sequence[str]], settings: SequentialSettings,
                     *, valid_targets: Sequence[str | None] | None = None,
                     refit: bool = False, progress: bool = True,
                     tenant: str = DEFAULT_TENANT) -> SequentialModel:
    """Train a model on user sequences (item ids in time order, one sequence per user).

    ``valid_targets[u]`` is user ``u``'s held-out next item (None: no target);
    with it the best epoch by validation NDCG@10 is kept and training stops
    early. Without it, all ``settings.epochs`` run and the last weights are kept.
    With ``refit`` (and targets), a fresh network is then trained for the best
    epoch count on the sequences with their targets appended, so the served model
    has learned each user's latest step too (twice the time; on MovieLens-100k
    test NDCG@10 0.088 -> 0.095, see the module docstring).
    Same sequences and settings (seed and threads included) give the same model.
    ``tenant`` is the tenant whose sequences these are: the model serves it only.
    """
    if valid_targets is not None and len(valid_targets) != len(sequences):
        raise InvalidInput(f"valid_targets has {len(valid_targets)} entries for "
                           f"{len(sequences)} sequences; give one per sequence (None for none)")
    item_ids = _vocabulary(sequences, valid_targets)
    if not item_ids:
        raise InvalidInput("no items to train on: every sequence is empty")
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    encoded = [np.array([index[i] for i in seq], dtype=np.int64) for seq in sequences]
    trainable = [s for s in encoded if len(s) >= 2]
    if not trainable:
        raise InvalidInput("no sequence has two or more events: nothing to learn from")

    previous_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        started = time.perf_counter()
        network, epochs_run, best_epoch, best_ndcg = _fit(
            trainable, encoded, valid_targets, index, len(item_ids), settings, progress)
        refit_epochs = 0
        if refit and best_ndcg is not None:
            refit_epochs = best_epoch
            extended = [np.append(seq, index[target]) if target is not None else seq
                        for seq, target in zip(encoded, valid_targets or [], strict=True)]
            network, *_ = _fit([s for s in extended if len(s) >= 2], extended, None, index,
                               len(item_ids), replace(settings, epochs=refit_epochs), progress,
                               desc="refit on all")
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous_threads)
    facts = TrainingFacts(epochs_run=epochs_run, best_epoch=best_epoch, best_valid_ndcg=best_ndcg,
                          refit_epochs=refit_epochs, train_seconds=round(seconds, 2),
                          n_sequences=len(sequences), n_items=len(item_ids))
    return SequentialModel(network, item_ids, settings, facts, tenant=tenant)


def _fit(trainable: list[np.ndarray], encoded: list[np.ndarray],
         valid_targets: Sequence[str | None] | None, index: dict[str, int], n_items: int,
         settings: SequentialSettings, progress: bool, desc: str = "train-seq"
         ) -> tuple[SasRec, int, int, float | None]:
    """The training loop; returns the network (best weights), epochs run, best epoch, best NDCG."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    network = build_network(n_items, settings).to(torch.device(settings.device))
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    targets = {u: t for u, t in enumerate(valid_targets or []) if t is not None}
    valid_users = list(targets)
    valid_histories = [encoded[u] for u in valid_users]
    valid_items = np.array([index[targets[u]] for u in valid_users], dtype=np.int64)

    best_state, best_ndcg, best_epoch, stale, epoch = None, -1.0, 0, 0, 0
    bar = tqdm(range(1, settings.epochs + 1), desc=desc, unit="epoch",
               disable=not progress)
    for epoch in bar:
        loss = train_epoch(network, optimizer, trainable, settings, rng)
        postfix = {"loss": f"{loss:.4f}"}
        if valid_users:
            ndcg, _ = evaluate_next_item(network, valid_histories, valid_items,
                                         max_len=settings.max_len)
            postfix["ndcg@10"] = f"{ndcg:.4f}"
            if ndcg > best_ndcg:
                best_state, best_ndcg, best_epoch, stale = (
                    copy.deepcopy(network.state_dict()), ndcg, epoch, 0)
            else:
                stale += 1
            postfix["best"] = f"{best_ndcg:.4f}@{best_epoch}"
        bar.set_postfix(postfix)
        if valid_users and stale >= settings.patience:
            break
    bar.close()
    if best_state is not None:
        network.load_state_dict(best_state)
    else:
        best_epoch = epoch
    return network.eval(), epoch, best_epoch, (best_ndcg if valid_users else None)


def train_epoch(network: SasRec, optimizer: torch.optim.Optimizer, sequences: list[np.ndarray],
                settings: SequentialSettings, rng: np.random.Generator) -> float:
    """One pass over the sequences (item-index arrays) in shuffled batches; the mean loss."""
    network.train()
    device = network.item_embedding.weight.device
    total, steps = 0.0, 0
    for inputs, targets in _batches(sequences, settings, rng, device):
        loss = network.loss(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1)


def _vocabulary(sequences: Sequence[Sequence[str]],
                valid_targets: Sequence[str | None] | None) -> list[str]:
    """Sorted item ids of the sequences and the validation targets.

    Targets are included so validation ranks over every known item; an item
    seen only as a target learns just from being a softmax negative.
    """
    items = {item for seq in sequences for item in seq}
    items.update(t for t in (valid_targets or []) if t is not None)
    return sorted(items)


def _window(sequence: np.ndarray, max_len: int, window: Window,
            rng: np.random.Generator) -> np.ndarray:
    """The slice of at most ``max_len + 1`` events that one epoch trains on."""
    if len(sequence) <= max_len + 1:
        return sequence
    end = len(sequence)
    if window == "random":
        end = int(rng.integers(max_len + 1, len(sequence) + 1))
    return sequence[end - max_len - 1:end]


def _batches(sequences: list[np.ndarray], settings: SequentialSettings,
             rng: np.random.Generator, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    """Shuffled (inputs, targets) batches, left-padded to each batch's longest window.

    Windows of similar length share a batch (sorted, ties in random order) and
    the batches come in random order: far less padding to compute on.
    """
    windows = [_window(sequences[u], settings.max_len, settings.window, rng)
               for u in rng.permutation(len(sequences))]
    windows.sort(key=len)
    batches = [windows[i:i + settings.batch_size]
               for i in range(0, len(windows), settings.batch_size)]
    for b in rng.permutation(len(batches)):
        windows = batches[b]
        width = max(len(w) for w in windows) - 1
        inputs = np.full((len(windows), width), PAD, dtype=np.int64)
        targets = np.full((len(windows), width), PAD, dtype=np.int64)
        for row, w in enumerate(windows):
            inputs[row, width - len(w) + 1:] = w[:-1]
            targets[row, width - len(w) + 1:] = w[1:]
        yield torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)


def evaluate_next_item(network: SasRec, histories: Sequence[np.ndarray], targets: np.ndarray,
                       *, max_len: int, k: int = 10) -> tuple[float, float]:
    """Mean NDCG@k and Recall@k of next items over a full ranking of all items.

    ``histories`` are item-index arrays (oldest first, 1-based: 0 is padding),
    ``targets`` one item index per history. The network scores each history's
    latest ``max_len`` events; :func:`engine.evaluation.target_ranks` masks the
    whole history (a target in it too: the engine never recommends a seen item)
    and counts ties against the target, so an empty history (all scores 0) ranks
    its target last.
    """
    if len(targets) == 0:
        return 0.0, 0.0
    network.eval()
    device = network.item_embedding.weight.device
    ranks = np.empty(len(targets), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(targets), _EVAL_BATCH):
            full = histories[start:start + _EVAL_BATCH]
            chunk = [h[-max_len:] for h in full]
            width = max((len(h) for h in chunk), default=0) or 1
            items = np.full((len(chunk), width), PAD, dtype=np.int64)
            for row, h in enumerate(chunk):
                if len(h):
                    items[row, width - len(h):] = h
            batch = torch.from_numpy(items).to(device)
            scores = network.logits(network.last_hidden(batch))
            scores = scores * (batch[:, -1:] != PAD)
            # score column c is item index c + 1 (index 0 is padding)
            ranks[start:start + len(chunk)] = target_ranks(
                scores.cpu().numpy(), [np.asarray(h, dtype=np.int64) - 1 for h in full],
                np.asarray(targets[start:start + len(chunk)], dtype=np.int64) - 1,
                mask_seen_target=True)
    means = mean_metrics(metrics_from_ranks(ranks, ks=(k,)))
    return means[f"NDCG@{k}"], means[f"Recall@{k}"]
