"""Encoder and re-ranker throughput on a GPU, in fp32, fp16 and bf16, against the raw forward.

    python -m benchmarks.gpu_throughput [--device cuda] [--texts 4096] [--lists 30] [--quick]

Text encoder (the configured one, MiniLM by default): the engine's ``encode_documents`` on
MovieLens-100k film texts (batch ``text_encoder.batch_size``) against the raw forward pass
of the same model on the same pre-tokenised batches, per dtype (the model's weights cast),
as texts/s and their ratio. Listwise re-ranker (the configured LLM): the one-pass scorer's
warm candidates/s against its raw forward pass (``benchmarks.rerank_throughput.measure``),
per dtype. ``--device cpu`` runs the same code on the CPU (fp32 and bf16), as a check of the
script on machines without CUDA; its numbers are no GPU figure and say so.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import matplotlib.pyplot as plt
import torch

from benchmarks.report import (
    NONE,
    RESULTS,
    Provenance,
    device_name,
    markdown_table,
    real_weights,
    write,
)
from benchmarks.rerank_throughput import lists, measure
from engine.config import EngineConfig
from engine.encoders.factory import create_text_encoder
from engine.rerank.listwise import ListwiseReranker
from engine.rerank.loading import RerankerSpec, load_causal_lm
from indexers.datasets import movielens_dir, movielens_items

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def text_rates(config: EngineConfig, device: str, dtype: torch.dtype, texts: list[str]
               ) -> dict[str, Any]:
    """Engine texts/s and raw-forward texts/s of the text encoder in ``dtype``, and the
    encoder's name (for the provenance)."""
    encoder: Any = create_text_encoder(config.text_encoder, device)  # TransformersTextEncoder
    encoder._model.to(dtype)
    encoder.encode_documents(texts[: encoder.batch_size])  # warm-up
    _sync(device)
    started = time.perf_counter()
    encoder.encode_documents(texts)
    _sync(device)
    engine_s = time.perf_counter() - started
    batches = [encoder._tokenize(texts[i:i + encoder.batch_size])
               for i in range(0, len(texts), encoder.batch_size)]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    _sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            encoder._model(**batch)
    _sync(device)
    raw_s = time.perf_counter() - started
    return {"engine_per_s": len(texts) / engine_s, "raw_per_s": len(texts) / raw_s,
            "ratio": raw_s / engine_s, "model": encoder.name}


def rerank_rates(config: EngineConfig, device: str, dtype: torch.dtype, n_lists: int
                 ) -> dict[str, Any]:
    """The listwise scorer's warm candidates/s against its raw forward, in ``dtype``, and the
    LLM's name (for the provenance)."""
    spec = RerankerSpec.from_settings(config.rerank, data_dir=config.store.data_dir,
                                      device=device)
    model, tokenizer, name = load_causal_lm(spec)
    reranker = ListwiseReranker(model.to(dtype), tokenizer, name=name)
    figures, _ = measure(reranker, lists(n_lists, 20, seed=0))
    return {**figures, "model": name}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--lists", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="1024 texts, 8 lists")
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (torch.cuda.is_available() is False)")
    n_texts, n_lists = (1024, 8) if args.quick else (args.texts, args.lists)
    dtypes = ["fp32", "fp16", "bf16"] if args.device != "cpu" else ["fp32", "bf16"]
    config = EngineConfig.load()
    films = [r["text"] for r in movielens_items(movielens_dir())]
    texts = (films * (n_texts // len(films) + 1))[:n_texts]
    text = {d: text_rates(config, args.device, DTYPES[d], texts) for d in dtypes}
    rerank = {d: rerank_rates(config, args.device, DTYPES[d], n_lists) for d in dtypes}
    gpu = torch.cuda.get_device_name(0) if torch.device(args.device).type == "cuda" else None
    data = {"device": args.device, "gpu": gpu, "texts": n_texts, "lists": n_lists,
            "text_encoder": {"name": config.text_encoder.model, "weights": "real", **text},
            "reranker": {"name": config.rerank.model, "weights": "real", **rerank}}
    rows = [[f"text encoder {d}", round(t["engine_per_s"]), round(t["raw_per_s"]),
             round(t["ratio"], 2)] for d, t in text.items()]
    rows += [[f"re-ranker {d} (candidates/s)", round(r["warm_candidates_per_s"], 1),
              round(r["raw_candidates_per_s"], 1), round(r["ratio"], 2)]
             for d, r in rerank.items()]
    where = gpu or f"{args.device} (not a GPU figure: a check of the script)"
    md = (f"# Throughput per dtype on {where}\n\n"
          f"{markdown_table(['part', 'engine /s', 'raw forward /s', 'engine / raw'], rows)}\n\n"
          f"Text encoder {config.text_encoder.model} on {n_texts} MovieLens texts; re-ranker "
          f"{config.rerank.model} on {n_lists} lists of 20 (warm prefix).")
    casts = ", ".join(dtypes)
    made = Provenance(
        f"MovieLens-100k: {n_texts:,} film texts (of {len(films):,} films); {n_lists} users "
        "(seed 0), each their latest 10 films and 20 unrated ones",
        {"text encoder": real_weights(text[dtypes[0]]["model"]) + f", cast to {casts}",
         "LLM re-ranker": real_weights(rerank[dtypes[0]]["model"]) + f", cast to {casts}"},
        NONE, device_name(args.device))
    write("gpu_throughput", data, md, provenance=made)
    plot(text, rerank)
    print(md)


def plot(text: dict[str, Any], rerank: dict[str, Any]) -> None:
    """Engine against raw rate per dtype, both parts."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (title, part, key) in zip(axes, (("text encoder (texts/s)", text, "per_s"),
                                             ("re-ranker (candidates/s)", rerank,
                                              "candidates_per_s")), strict=True):
        names = list(part)
        engine_key, raw_key = ("engine_per_s", "raw_per_s") if key == "per_s" else (
            "warm_candidates_per_s", "raw_candidates_per_s")
        ax.bar([i - 0.2 for i in range(len(names))], [part[n][engine_key] for n in names],
               0.4, label="engine")
        ax.bar([i + 0.2 for i in range(len(names))], [part[n][raw_key] for n in names],
               0.4, label="raw forward")
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "gpu_throughput.png", dpi=120)


if __name__ == "__main__":
    main()
