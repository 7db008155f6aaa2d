"""Published numbers printed beside ours in ``mmrec bench``'s report, each with its source.

``fair`` says whether the comparison is like for like (same data, same protocol); a loose one
differs in data or protocol, and the note says how. Numbers are quoted as the sources print
them; none of them is re-measured here.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.report import markdown_table


@dataclass(frozen=True, slots=True)
class Reference:
    """One published number."""

    suite: str
    what: str
    value: str
    source: str
    fair: bool
    note: str


REFERENCES: tuple[Reference, ...] = (
    Reference("clip", "CLIP ViT-B/32 LAION-2B, MS-COCO 5k text-to-image R@1 / R@5",
              "39.3 / 65.4", "OpenCLIP model card and results table (LAION-2B, "
              "laion2b_s34b_b79k)", False,
              "MS-COCO 5k test captions, not Tux Paint stamp captions"),
    Reference("quality", "SASRec NDCG@10, ML-1M, 20 candidates (1 target + 19 sampled)",
              "0.79", "Hou et al., Large Language Models are Zero-Shot Rankers for "
              "Recommender Systems, ECIR 2024", False,
              "ML-1M with 20 sampled candidates; ours ranks the full ML-100k catalog"),
    Reference("quality", "zero-shot ChatGPT re-ranking, same setting", "0.43",
              "Hou et al., ECIR 2024", False, "as above; a 7B+ zero-shot LLM"),
    Reference("quality", "LlamaRec (Llama-2-7B, QLoRA) over LRURec, NDCG@10",
              "0.0705 -> 0.0759 (+7.7 %)", "Yue et al., LlamaRec: Two-Stage "
              "Recommendation using Large Language Models for Ranking, 2023", False,
              "ml-latest-small, full ranking; the relative gain is the comparable figure"),
)


def for_suite(suite: str) -> str:
    """The Markdown table of ``suite``'s references, or an empty string."""
    rows = [[r.what, r.value, r.source, "fair" if r.fair else "loose", r.note]
            for r in REFERENCES if r.suite == suite]
    if not rows:
        return ""
    return markdown_table(["reference", "value", "source", "comparison", "why"], rows)
