"""CLIP on Tux Paint: text-to-image and image-to-text Recall@1/5/10, and encode rates.

    python -m benchmarks.clip_retrieval [--limit N] [--batch-size 32]

Each Tux Paint stamp is an image and its one-line caption (``indexers.datasets``); a caption
queries every stamp image (text-to-image) and an image every caption (image-to-text), by the
cosine of the configured open_clip model's embeddings, the pair's own partner being the one
relevant answer (ranks and Recall@k through ``engine.evaluation``). Needs real CLIP weights
(``clip.pretrained``): with random ones recall is chance, so the script refuses them and
says why in one line. The published reference (CLIP ViT-B/32 LAION-2B on MS-COCO 5k: T->I
R@1 39.3, R@5 65.4) is printed beside ours by ``mmrec bench``; it is a loose comparison
(different captions, different images: stamp captions are short and some are near
duplicates, "Cat." and "Kitten.").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.report import (
    NONE,
    RESULTS,
    Provenance,
    device_name,
    markdown_table,
    real_weights,
    write,
)
from engine.config import EngineConfig
from engine.domain import ModelUnavailable
from engine.encoders.base import ClipEncoder
from engine.encoders.factory import create_clip_encoder, resolve_device
from engine.encoders.images import load_image
from engine.evaluation import mean_metrics, metrics_from_ranks
from indexers.datasets import stamps_dir, tuxpaint_items

KS = (1, 5, 10)


def pair_ranks(text: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of each row's partner (row ``i`` of the other side), ties pessimistic:
    text-to-image and image-to-text. Rows are unit vectors, so the dot product is the cosine."""
    similarity = text @ image.T
    own = np.diag(similarity)[:, None]  # the partner itself counts: a tie ranks below it
    by_image = similarity.T
    return ((similarity >= own).sum(axis=1).astype(np.float64),
            (by_image >= own).sum(axis=1).astype(np.float64))


def recall(ranks: np.ndarray) -> dict[str, float]:
    """Recall@1/5/10 in percent, as CLIP papers print them."""
    means = mean_metrics(metrics_from_ranks(ranks, KS))
    return {f"R@{k}": 100 * means[f"Recall@{k}"] for k in KS}


def measure(encoder: ClipEncoder, captions: Sequence[str], images: Sequence[Any]
            ) -> dict[str, Any]:
    """Both directions' recall and the encode rates (items/s) of ``encoder`` on the pairs."""
    started = time.perf_counter()
    text = encoder.encode_texts(list(captions))
    text_s = time.perf_counter() - started
    started = time.perf_counter()
    image = encoder.encode_images(list(images))
    image_s = time.perf_counter() - started
    t2i, i2t = pair_ranks(np.asarray(text), np.asarray(image))
    return {"pairs": len(captions), "text_to_image": recall(t2i), "image_to_text": recall(i2t),
            "texts_per_s": len(captions) / text_s, "images_per_s": len(images) / image_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="first N stamps (0: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    stamps = stamps_dir()
    if stamps is None:
        raise SystemExit("the Tux Paint stamps are missing: run `make data` first")
    config = EngineConfig.load()
    settings = config.clip.model_copy(update={"batch_size": args.batch_size})
    if settings.random_weights:
        raise SystemExit("clip.random_weights is set: recall of random weights is chance")
    try:
        encoder = create_clip_encoder(settings, config.device)
    except ModelUnavailable as error:
        raise SystemExit(f"no CLIP weights: {str(error).splitlines()[0]}") from None
    rows = [r for r in tuxpaint_items(stamps) if r["image"]][: args.limit or None]
    images = [load_image(r["image"]) for r in rows]
    result = measure(encoder, [r["title"] for r in rows], images)
    data = {"data": f"Tux Paint stamps ({len(rows)} image-caption pairs)",
            "model": {"name": str(encoder), "weights": "real", "arch": settings.model,
                      "pretrained": settings.pretrained}, "device": config.device, **result}
    table = markdown_table(["direction", *(f"R@{k}" for k in KS)],
                           [[d.replace("_", " "), *(round(result[d][f"R@{k}"], 1) for k in KS)]
                            for d in ("text_to_image", "image_to_text")])
    md = (f"# CLIP retrieval on Tux Paint ({len(rows)} pairs)\n\nModel {encoder} "
          f"({settings.model}, {settings.pretrained}).\n\n{table}\n\nEncode rates: "
          f"{result['texts_per_s']:.0f} captions/s, {result['images_per_s']:.1f} images/s "
          f"(batch {args.batch_size}, device {config.device}).")
    made = Provenance(f"Tux Paint stamps, {len(rows)} image-caption pairs",
                      {"CLIP": real_weights(encoder.name)}, NONE,
                      device_name(resolve_device(config.device)))
    write("clip_retrieval", data, md, provenance=made)
    plot(result)
    print(md)


def plot(result: dict[str, Any]) -> None:
    """Recall@k of both directions."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for direction in ("text_to_image", "image_to_text"):
        ax.plot(KS, [result[direction][f"R@{k}"] for k in KS], marker="o",
                label=direction.replace("_", " "))
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "clip_retrieval.png", dpi=120)


if __name__ == "__main__":
    main()
