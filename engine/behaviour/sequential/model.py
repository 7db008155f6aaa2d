"""SASRec: a causal transformer over a user's item sequence that predicts the next item.

The network follows Kang & McAuley (2018) with the full-softmax cross-entropy
loss of Klenitskiy & Vasilev (2023), which trains better than SASRec's original
one-negative binary loss. Logits are dot products with the item embedding table
itself (tied weights) and have no bias, so an item's embedding *is* its vector
for nearest-neighbour search.

Sequences are left-padded with index 0. Positions count back from the end of
the window: the newest event always has the last position, whatever the
sequence's length, so a batch only needs padding to its own longest sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAD = 0
"""Item index of padding; real items are 1..n_items."""


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each step sees itself and earlier real items."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` [B, L, D]; ``mask`` [B, 1, L, L], True where attention is allowed."""
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, dim // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, length, dim))


class SasRecBlock(nn.Module):
    """Attention then a two-layer feed-forward net, each with a residual and a LayerNorm."""

    def __init__(self, dim: int, heads: int, dropout: float, norm_first: bool,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attention = CausalSelfAttention(dim, heads, attention_dropout)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """One block on ``x`` [B, L, D] under the attention ``mask``."""
        if self.norm_first:
            x = x + self.drop(self.attention(self.norm1(x), mask))
            return x + self.drop(self.feed_forward(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attention(x, mask)))
        return self.norm2(x + self.drop(self.feed_forward(x)))


class SasRec(nn.Module):
    """Next-item model: item sequence [B, L] (left-padded) -> a hidden state per step.

    ``n_items`` counts real items; the embedding table has one more row, index 0,
    for padding (kept at zero). The hidden state of the last step is the user's
    query vector; :meth:`logits` scores it against every item.
    """

    def __init__(self, n_items: int, dim: int = 64, layers: int = 2, heads: int = 2,
                 max_len: int = 50, dropout: float = 0.5, norm_first: bool = True,
                 attention_dropout: float = 0.5) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
        self.position_embedding = nn.Embedding(max_len, dim)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            SasRecBlock(dim, heads, dropout, norm_first, attention_dropout)
            for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small normal embeddings (std 0.02, as in BERT/GPT): tied logits start near uniform."""
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[PAD].zero_()

    def forward(self, items: Tensor) -> Tensor:
        """Hidden states [B, L, D] of left-padded item indices [B, L], L <= ``max_len``."""
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        real = items != PAD
        positions = torch.arange(self.max_len - length, self.max_len, device=items.device)
        x = self.item_embedding(items) + self.position_embedding(positions)
        x = self.embedding_dropout(x) * real.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        # Keys are earlier real items; every step also sees itself, so no row is empty.
        mask = (causal & real.unsqueeze(1)) | torch.eye(length, dtype=torch.bool,
                                                        device=items.device)
        mask = mask.unsqueeze(1)
        for block in self.blocks:
            x = block(x, mask) * real.unsqueeze(-1)
        return self.final_norm(x)

    def last_hidden(self, items: Tensor) -> Tensor:
        """The newest step's hidden state [B, D]: the user's query vector."""
        return self.forward(items)[:, -1]

    def item_table(self) -> Tensor:
        """Embeddings of the real items [n_items, D] (padding row left out)."""
        return self.item_embedding.weight[1:]

    def logits(self, hidden: Tensor) -> Tensor:
        """Dot-product scores [..., n_items] of hidden states [..., D] against every item."""
        return hidden @ self.item_table().T

    def loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Mean full-softmax cross-entropy of the next item at every real step.

        ``inputs`` and ``targets`` are [B, L] item indices, ``targets`` the
        inputs shifted by one; steps whose target is padding do not count.
        """
        hidden = self.forward(inputs)
        real = targets != PAD
        logits = self.logits(hidden[real])
        return F.cross_entropy(logits, targets[real] - 1)
