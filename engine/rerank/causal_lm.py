"""What mmrec uses of a loaded causal LM, as a type, and decoding one sequence of its tokens.

Kept apart from loading and conversion, which both hand such models out, so
neither has to import the other for the type.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, Self

import torch
from transformers import PreTrainedTokenizerBase


class CausalLM(Protocol):
    """What mmrec uses of a loaded causal LM (a Hugging Face ``PreTrainedModel`` with
    ``GenerationMixin``): to convert it, run it, and generate with it.

    A plain ``torch.nn.Module`` types its unknown attributes as tensors or submodules, so it
    would not say that ``generate`` can be called; transformers names its loaders' result
    only by a private class, whose ``to`` is wrapped out of a usable signature."""

    @property
    def config(self) -> Any:
        """The model's ``PretrainedConfig``."""
        ...

    @property
    def generation_config(self) -> Any:
        """The model's ``GenerationConfig`` (kept when a GGUF file is converted)."""
        ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A forward pass (its output has ``logits`` and the key/value cache)."""
        ...

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The forward method, read for the name of its cache argument."""
        ...

    def eval(self) -> Self:
        """Inference mode; returns the model."""
        ...

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """The model moved to a device or cast to a dtype (returns the model)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The weights by name."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """The weights (their device and dtype are the model's)."""
        ...

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Token ids, prompt included (the default ``return_dict_in_generate=False``)."""
        ...


def decode_one(
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int] | torch.Tensor,
    *,
    skip_special_tokens: bool = False,
) -> str:
    """``tokenizer.decode`` of one sequence of token ids: a string (only a batch of sequences
    decodes to a list, which ``decode``'s declared ``str | list[str]`` allows for)."""
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    if not isinstance(text, str):
        raise TypeError(f"decoding one sequence of token ids gave {type(text).__name__}")
    return text


__all__ = ["CausalLM", "decode_one"]
