"""The trained listwise re-ranker on MovieLens-100k: quality, training cost, latency, bias.

Protocol (``benchmarks.recommend.protocol``): leave-one-out by time; the test
target is each user's last item, and everything before it is the log
``mmrec train-rerank`` would see. Inside that log, as in ``indexers.rerank``:
validation = the last item, training = the one before, candidates from a shadow
first stage fitted without those two (SASRec for ``--sasrec-epochs``,
co-occurrence, MiniLM content vectors, the configured fusion defaults). At
test, the first stage is refitted on the whole log and ranks the top 20; the
hybrid row is its order, the re-ranked rows re-order those 20 with the LLM
(blended with the weight chosen on validation, and alone). The zero-shot row
is the same prompt on the untrained model, for the first ``--zero-shot-users``.
Lists that do not hold their target score 0 under any order and are not
scored (``score_lists(skip_missing=True)``): every NDCG is over all users, and
only the informative ~28 % of lists cost LLM time. Position bias is measured on
50 informative validation lists in two orders, and the NDCG of the two orders'
mean score is reported beside the single order's (the cost of debiasing is a
second forward pass). The cheap cure is also measured: the mean label log-prob
of each slot over the validation lists (the LLM's pull towards positions) is
subtracted from every list's scores, and the blend weight is chosen again on the
calibrated validation scores (the same lists estimate the prior and choose the
weight; the test lists never do). The JSON is written after each phase (``"phase"``), so a
run stopped part-way leaves what it measured.

    python -m benchmarks.rerank_quality [--model smollm2] [--steps 600] [--valid 500]
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from dataclasses import asdict
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from benchmarks.recommend.engine_runs import item_id
from benchmarks.recommend.protocol import load_movielens, protocol_split
from benchmarks.report import (
    NONE,
    RESULTS,
    Provenance,
    device_name,
    markdown_table,
    real_weights,
    write,
)
from benchmarks.rerank_throughput import measure
from engine.behaviour import BehaviourModel
from engine.behaviour.cooccurrence import CooccurrenceModel
from engine.behaviour.sequential import SequentialSettings, train_sequential
from engine.config import EngineConfig
from engine.domain import BEHAVIOUR, COOCCURRENCE, ItemRecord
from engine.encoders import create_text_encoder, resolve_device
from engine.recommend.offline import FusionSettings, OfflineFirstStage
from engine.rerank.listwise import ListwiseReranker
from engine.rerank.loading import RerankerSpec, load_causal_lm
from engine.rerank.quantise import int8_linear, ranking_agreement
from engine.rerank.stage import Blend
from engine.rerank.training import (
    RerankExample,
    TrainLog,
    TrainSettings,
    bias_figures,
    blended_ndcg,
    calibrate,
    choose_blend,
    lora_model,
    position_prior,
    score_lists,
    train_listwise,
    two_order_scores,
)
from indexers.datasets import movielens_dir, movielens_items

K = 20


def catalog() -> dict[str, ItemRecord]:
    """Every film of ml-100k.item with its title, year and genres."""
    return {r["id"]: ItemRecord(id=r["id"], title=r["title"], text=r["text"],
                                attributes={"genres": r["genres"], "year": r["year"]})
            for r in movielens_items(movielens_dir())}


def first_stage(sequences: list[list[str]], ids: list[str], content: np.ndarray,
                config: EngineConfig, epochs: int) -> tuple[OfflineFirstStage, FusionSettings]:
    """SASRec + co-occurrence fitted on ``sequences``, content vectors, the default fusion."""
    models: dict[str, BehaviourModel] = {
        BEHAVIOUR: train_sequential(sequences, SequentialSettings(
            dim=config.behaviour.dim, epochs=epochs), progress=True),
        COOCCURRENCE: CooccurrenceModel.fit(sequences, dim=config.behaviour.cooccurrence_dim,
                                            decay=config.behaviour.cooccurrence_decay)}
    stage = OfflineFirstStage.from_settings(ids, models, content, config.recommend,
                                            config.profiles)
    return stage, FusionSettings.from_recommend(config.recommend, stage.channels)


def examples(stage: OfflineFirstStage, fusion: FusionSettings,
             pairs: list[tuple[list[str], str]]) -> list[RerankExample]:
    """First-stage top K for each (history, target)."""
    histories = [h for h, _ in pairs]
    lists = stage.candidates_for(histories, fusion, K, exclude=histories)
    return [RerankExample(tuple(h), tuple(c), t) for (h, t), c in zip(pairs, lists, strict=True)]


def latency(reranker: ListwiseReranker, records: dict[str, ItemRecord],
            sample: list[RerankExample]) -> dict[str, float]:
    """p50/p95 ms of one 20-candidate call, prefix cold and warm; candidates/s vs raw forward
    (``benchmarks.rerank_throughput.measure`` on these lists)."""
    pairs = [([records[h] for h in e.history], [records[c] for c in e.candidates])
             for e in sample]
    return measure(reranker, pairs)[0]


def int8_check(reranker: ListwiseReranker, records: dict[str, ItemRecord],
               valid: list[RerankExample], fp32: list[list[float]], blend: Blend
               ) -> dict[str, float]:
    """The trained model with int8 weights on the validation lists: agreement and NDCG."""
    lora: Any = copy.deepcopy(reranker.model)  # a peft model; CausalLM types the inference side
    merged = lora.merge_and_unload()  # as served: the LoRA merged first
    quantised = ListwiseReranker(int8_linear(merged), reranker.tokenizer,
                                 prompt=reranker.prompts.settings)
    lists = [(e, row) for e, row in zip(valid, fp32, strict=True) if row]
    valid, fp32 = [e for e, _ in lists], [row for _, row in lists]
    scores = score_lists(quantised, records, valid)
    return {**ranking_agreement(fp32, scores),
            "valid_ndcg10_fp32": blended_ndcg(valid, fp32, blend),
            "valid_ndcg10_int8": blended_ndcg(valid, scores, blend)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--valid", type=int, default=500)
    parser.add_argument("--test-users", type=int, default=0, help="0: all")
    parser.add_argument("--zero-shot-users", type=int, default=100)
    parser.add_argument("--sasrec-epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=TrainSettings().learning_rate)
    parser.add_argument("--batch-size", type=int, default=TrainSettings().batch_size)
    parser.add_argument("--name", default="rerank_quality")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.monotonic()
    config = EngineConfig.load(rerank={"model": args.model})
    records = catalog()
    train, valid, test, fusion = lists(args, config, records)
    data: dict[str, Any] = {"args": vars(args), "test_users": len(test),
                            "fusion": fusion.to_json(), "phase": "lists",
                            "recall20_first_stage": float(np.mean(
                                [e.target in e.candidates for e in test])),
                            "valid_lists_scored": sum(e.target in e.candidates for e in valid)}
    write(args.name, data, f"# partial: {data['phase']}",
          provenance=provenance(args, config, records, data))
    spec = RerankerSpec.from_settings(config.rerank, data_dir=config.store.data_dir,
                                      device=config.device)
    base, tokenizer, name = load_causal_lm(spec)
    zero_test = test[: args.zero_shot_users]
    zero_scores = score_lists(ListwiseReranker(base, tokenizer, name=name), records, zero_test,
                              skip_missing=True)
    settings = TrainSettings(max_examples=args.steps, eval_every=args.eval_every,
                             valid_examples=args.valid, seed=args.seed,
                             learning_rate=args.learning_rate, batch_size=args.batch_size)
    reranker = ListwiseReranker(lora_model(base, settings), tokenizer, name=name)
    run = fit(reranker, records, train, valid, settings)
    data.update(model=name, phase="trained", settings=asdict(settings), training={
        "steps": run.steps, "seconds": run.seconds, "examples_per_second":
        run.examples_per_second, "curve": run.curve, "best_step": run.best_step,
        "loss_first_50": float(np.nanmean(run.losses[:50])),
        "loss_last_50": float(np.nanmean(run.losses[-50:]))})
    write(args.name, data, f"# partial: {data['phase']}",
          provenance=provenance(args, config, records, data))
    valid_scores = score_lists(reranker, records, valid, skip_missing=True)
    blend, trials = choose_blend(valid, valid_scores)
    prior = position_prior([row for row in valid_scores if row])
    calibrated_blend, calibrated_trials = choose_blend(valid, calibrate(valid_scores, prior))
    data["blend"] = {"weight": blend.weight, "trials": trials}
    data["calibration"] = {"prior": prior, "weight": calibrated_blend.weight,
                           "trials": calibrated_trials}
    test_scores = score_lists(reranker, records, test, skip_missing=True)
    table = rows(test, test_scores, zero_test, zero_scores, blend)
    calibrated = calibrate(test_scores, prior)
    table[f"hybrid + trained LLM, slot prior removed, blend w={calibrated_blend.weight:g}"] = \
        blended_ndcg(test, calibrated, calibrated_blend)
    table["hybrid + trained LLM alone, slot prior removed (w=1)"] = \
        blended_ndcg(test, calibrated, Blend(1.0))
    data.update(phase="scored", ndcg10=table)
    write(args.name, data, f"# partial: {data['phase']}",
          provenance=provenance(args, config, records, data))
    informative = [e for e in valid if e.target in e.candidates][:50]
    data.update(bias_check(reranker, records, informative, blend))
    data["latency"] = latency(reranker, records, test[:30])
    data["int8"] = int8_check(reranker, records, valid, valid_scores, blend)
    data.update(phase="done", total_minutes=(time.monotonic() - started) / 60)
    plot(run.curve, trials[0.0], args.name)
    md = report(data)
    write(args.name, data, md, provenance=provenance(args, config, records, data))
    print(md)


def provenance(args: argparse.Namespace, config: EngineConfig, records: dict[str, ItemRecord],
               data: dict[str, Any]) -> Provenance:
    """The split and its lists, the models fitted and trained here (the LLM once loaded:
    ``data["model"]``), no store (the first stage is the offline replica), the devices."""
    llm = (real_weights(f"{data['model']} + LoRA adapter trained here (seed {args.seed}, "
                        f"{args.steps} examples)") + "; the zero-shot row: the base model"
           if "model" in data else f"{config.rerank.model}, not loaded yet")
    models = {"text encoder": real_weights(config.text_encoder.model) + ", content vectors",
              "SASRec": real_weights(f"SASRec trained here, {args.sasrec_epochs} epochs "
                                     "(shadow and refitted first stages)"),
              "co-occurrence": "embeddings fitted here on the same logs",
              "LLM re-ranker": llm}
    split = (f"MovieLens-100k ({len(records):,} films), leave-one-out by time: "
             f"{data['test_users']:,} test users' first-stage top {K}, {args.valid} validation "
             f"and {args.steps} training lists (seed {args.seed})")
    llm_device = device_name(resolve_device(config.device))
    return Provenance(split, models, f"{NONE} (the recommend first stage replicated offline)",
                      llm_device if llm_device == "cpu" else
                      f"{llm_device} (the LLM); cpu (the text encoder and SASRec)")


def lists(args: argparse.Namespace, config: EngineConfig, records: dict[str, ItemRecord]
          ) -> tuple[list[RerankExample], list[RerankExample], list[RerankExample],
                     FusionSettings]:
    """Training, validation and test lists: shadow first stage for the first two, the
    first stage refitted on the whole log for the test (see the module docstring)."""
    rng = random.Random(args.seed)
    split = protocol_split(load_movielens())
    ids = [item_id(raw) for raw in split.data.item_ids]
    log = [[ids[i] for i in h] for h in split.history("test")]  # all but the test item
    tests = [ids[t] for t in split.targets("test")]
    encoder = create_text_encoder(config.text_encoder, "cpu")
    content = np.asarray(encoder.encode_documents([records[i].document_text for i in ids]),
                         np.float32)
    shadow, fusion = first_stage([s[:-2] for s in log], ids, content, config, args.sasrec_epochs)
    train_pairs = [(s[:-2], s[-2]) for s in log]
    valid_pairs = rng.sample([(s[:-1], s[-1]) for s in log], min(args.valid, len(log)))
    train = examples(shadow, fusion, rng.sample(train_pairs, min(args.steps, len(train_pairs))))
    valid = examples(shadow, fusion, valid_pairs)
    served, _ = first_stage(log, ids, content, config, args.sasrec_epochs)
    users = list(range(len(log)))[: args.test_users or None]
    return train, valid, examples(served, fusion, [(log[u], tests[u]) for u in users]), fusion


def fit(reranker: ListwiseReranker, records: dict[str, ItemRecord],
        train: list[RerankExample], valid: list[RerankExample], settings: TrainSettings
        ) -> TrainLog:
    """``train_listwise`` with a progress bar."""
    with tqdm(total=len(train), desc="train-rerank", unit="step") as bar:
        def show(_: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        return train_listwise(reranker, records, train, valid, settings, progress=show)


def rows(test: list[RerankExample], scores: list[list[float]], zero_test: list[RerankExample],
         zero_scores: list[list[float]], blend: Blend) -> dict[str, float]:
    """The NDCG@10 table: first stage, blended, LLM alone, zero-shot on the first users."""
    return {
        "hybrid (first stage)": blended_ndcg(test, scores, Blend(0.0)),
        f"hybrid + trained LLM, blend w={blend.weight:g}": blended_ndcg(test, scores, blend),
        "hybrid + trained LLM alone (w=1)": blended_ndcg(test, scores, Blend(1.0)),
        f"hybrid, first {len(zero_test)} users": blended_ndcg(
            zero_test, scores[:len(zero_test)], Blend(0.0)),
        f"hybrid + zero-shot listwise LLM (w=1), first {len(zero_test)} users": blended_ndcg(
            zero_test, zero_scores, Blend(1.0))}


def bias_check(reranker: ListwiseReranker, records: dict[str, ItemRecord],
               lists: list[RerankExample], blend: Blend) -> dict[str, Any]:
    """Position bias on ``lists`` (two orders), and what averaging the two orders is worth."""
    forward, reverse = two_order_scores(reranker, records, lists)
    mean = [[(a + b) / 2 for a, b in zip(f, r, strict=True)]
            for f, r in zip(forward, reverse, strict=True)]
    return {"position_bias": bias_figures(forward, reverse), "bias_lists": len(lists),
            "two_orders": {f"{label} w={w:g}": blended_ndcg(lists, scores, Blend(w))
                           for w in sorted({0.0, blend.weight, 1.0})
                           for label, scores in (("one order", forward),
                                                 ("mean of two", mean))}}


def plot(curve: list[tuple[int, float]], first: float, name: str) -> None:
    """Learning curve: validation NDCG@10 of the LLM order against training examples seen."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o", label="LLM order")
    ax.axhline(first, color="grey", linestyle="--", label="first stage")
    ax.set_xlabel("training examples seen")
    ax.set_ylabel("validation NDCG@10 (top 20)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


def report(data: dict[str, Any]) -> str:
    """The Markdown page."""
    t, s, b, q = data["training"], data["latency"], data["position_bias"], data["int8"]
    st = data["settings"]
    table = markdown_table(["row", "NDCG@10"], [[k, round(v, 4)] for k, v in
                                                data["ndcg10"].items()])
    return (f"# Trained listwise re-ranker: MovieLens-100k test, {data['test_users']} users\n\n"
            f"LLM {data['model']}; first stage: offline replica of the recommend query "
            f"({data['fusion']}); its Recall@20 (the re-ranker's ceiling) "
            f"{data['recall20_first_stage']:.3f}. Seed {data['args']['seed']} only.\n\n{table}\n\n"
            f"Blend weight chosen on {data['args']['valid']} validation users "
            f"({data['valid_lists_scored']} lists hold their target), kept only if its gain "
            f"over w=0 is > 2 SE: {data['blend']['weight']:g} (trials "
            f"{ {k: round(v, 4) for k, v in data['blend']['trials'].items()} }).\n\n"
            f"Training: {t['steps']} steps in {t['seconds'] / 60:.1f} min "
            f"({t['examples_per_second']:.2f} examples/s; LoRA r={st['lora_rank']}, peak "
            f"lr {st['learning_rate']:g}, {st['batch_size']} examples per update, "
            f"{st['warmup']:.0%} warm-up, linear decay), best at step {t['best_step']}; "
            f"validation curve {[(n, round(v, 4)) for n, v in t['curve']]}; mean loss first "
            f"50 steps {t['loss_first_50']:.3f}, last 50 {t['loss_last_50']:.3f} "
            f"(ln 20 = 3.00 is chance).\n\n"
            f"Position bias ({data['bias_lists']} validation lists holding their target, as "
            f"given and reversed): top-1 agreement {b['top1_agreement']:.2f}, rank correlation "
            f"{b['rank_correlation']:.2f}, best in the first slot "
            f"{b['first_slot_share']:.2f} (1/20 = 0.05 unbiased). NDCG@10 on those lists, one "
            f"order against the mean score of both orders: "
            f"{ {k: round(v, 4) for k, v in data['two_orders'].items()} }. Slot prior "
            f"removed (mean log-prob per slot on the validation lists, subtracted): blend "
            f"weight chosen again {data['calibration']['weight']:g} (trials "
            f"{ {k: round(v, 4) for k, v in data['calibration']['trials'].items()} }).\n\n"
            f"Latency of one 20-candidate call: prefix cold p50 {s['cold_p50_ms']:.0f} ms, "
            f"warm p50 {s['warm_p50_ms']:.0f} ms / p95 {s['warm_p95_ms']:.0f} ms; raw forward "
            f"of the same tokens p50 {s['raw_p50_ms']:.0f} ms; scorer / raw "
            f"candidates/s = {s['ratio']:.2f} (measured while the run shared the machine; "
            f"benchmarks/rerank_throughput is the quiet measurement).\n\n"
            f"int8 weights (LoRA merged, then dynamic quantisation) on the validation lists: "
            f"top-1 agreement {q['top1_agreement']:.2f}, Kendall tau {q['kendall_tau']:.3f}, "
            f"top-10 overlap {q['top10_overlap']:.2f}; blended NDCG@10 fp32 "
            f"{q['valid_ndcg10_fp32']:.4f}, int8 {q['valid_ndcg10_int8']:.4f}.\n\n"
            f"Total {data['total_minutes']:.0f} min.")


if __name__ == "__main__":
    main()
