"""SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (reference
code: kang205/SASRec, pmixer/SASRec.pytorch), trained with the full-softmax cross-entropy of
Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than
SASRec?", RecSys 2023 (SASRec+CE).

The last max_len item codes of a user (LEFT-padded with -1, see `models.sequences`) are
embedded (tied input/output item table plus a padding row), a learned position embedding
is added (positions count back from the newest item, so padding never shifts them; drawn
at the item table's N(0, 0.02), not nn.Embedding's N(0, 1), which would swamp the items), and
optionally a bucketed time-gap embedding; then `n_blocks` pre-LN causal self-attention
blocks. The state at the newest position scores the catalog.

Shapes: B = users in a batch, L = sequence length (<= max_len), D = d_model, I = n_items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import register
from models.seqtrain import SequenceNet, SequenceRecommender, attention_mask, time_gap_buckets


@dataclass
class SASRecConfig:
    d_model: int = 64  # item, position and hidden width
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2  # on embeddings, attention weights and block outputs
    max_len: int = 200  # the newest max_len items are read
    time_buckets: int = 0  # 0 = no time-gap embedding; else log2 buckets of the gap to the previous event
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.0
    batch_size: int = 128  # users per step
    epochs: int = 200


class Block(nn.Module):
    """Pre-LN: x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        assert d % n_heads == 0, f"d_model {d} must be a multiple of n_heads {n_heads}"
        self.n_heads, self.dropout = n_heads, dropout
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)  # (B, L, D) each
        q, k, v = (t.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, L, D/H)
        # mask (B, 1, L, L) always lets a query see itself, so no softmax row is empty (no NaN).
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, D)))
        return x + self.drop(self.ffn(self.ln_2(x)))


class SASRecNet(SequenceNet):
    def __init__(self, n_items: int, c: SASRecConfig) -> None:
        super().__init__(n_items, c.d_model)
        self.max_len, self.time_buckets, self.scale = c.max_len, c.time_buckets, math.sqrt(c.d_model)
        self.pos_emb = nn.Embedding(c.max_len, c.d_model)
        # nn.Embedding draws N(0, 1); the items are N(0, 0.02) * sqrt(d_model) (0.16 at d = 64), so
        # at that scale the positions drown the items and training crawls (chrono-loo ML-100K:
        # validation NDCG@10 0.08 after 50 epochs instead of 0.10 after 10). Same scale as the items.
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.gap_emb = nn.Embedding(c.time_buckets + 1, c.d_model) if c.time_buckets else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([Block(c.d_model, c.n_heads, c.dropout) for _ in range(c.n_blocks)])
        self.ln_f = nn.LayerNorm(c.d_model)

    def hidden(self, codes: torch.Tensor, times_s: torch.Tensor | None) -> torch.Tensor:
        L = codes.shape[1]
        assert self.max_len >= L, f"sequence of {L} codes is longer than max_len {self.max_len}"
        pad = codes < 0  # (B, L)
        position = torch.arange(self.max_len - L, self.max_len, device=codes.device)  # newest = max_len - 1
        x = self.embed(codes) * self.scale + self.pos_emb(position)  # (B, L, D)
        if self.gap_emb is not None and times_s is not None:
            x = x + self.gap_emb(time_gap_buckets(times_s, pad, self.time_buckets))
        x = self.drop(x).masked_fill(pad[..., None], 0.0)
        mask = attention_mask(pad)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)  # (B, L, D)


@register
class SASRec(SequenceRecommender):
    kind = "sasrec"
    Config = SASRecConfig

    def __init__(self, n_items: int, config: SASRecConfig | None = None) -> None:
        super().__init__(n_items, config)
        self.net = SASRecNet(n_items, self.config)
