"""HSTU: Zhai et al., "Actions Speak Louder than Words: Trillion-Parameter Sequential
Transducers for Generative Recommendations", ICML 2024 (reference code:
facebookresearch/generative-recommenders), at the size of an offline benchmark.

Each block (Eq. 1-3 of the paper):

    U, V, Q, K = split(SiLU(f1(LN(x))))
    A = SiLU(Q K^T + rab_pos(i - j) + rab_time(bucket(t_i - t_j))) / max_len   (causal; no softmax)
    x = x + f2(LN(A V) * U)

The pointwise attention has no softmax, so a query with no visible key simply gets A = 0:
no NaN is possible, and padded keys are zeroed by the mask. Dividing by the fixed max_len
(not by the batch's padded width) keeps a row's output independent of extra left padding.
Input, training loss (SASRec+CE) and scoring are those of `models.seqtrain`.

Shapes: B = users, L = sequence length (<= max_len), D = d_model, H = heads, Dh = D / H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import register
from models.seqtrain import SequenceNet, SequenceRecommender


@dataclass
class HSTUConfig:
    d_model: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2  # on embeddings and block outputs
    max_len: int = 200
    time_buckets: int = 0  # 0 = no relative time bias; else log2 buckets of |t_i - t_j| in seconds
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200


class HSTUBlock(nn.Module):
    def __init__(self, c: HSTUConfig) -> None:
        super().__init__()
        assert c.d_model % c.n_heads == 0, f"d_model {c.d_model} must be a multiple of n_heads {c.n_heads}"
        self.n_heads, self.max_len, self.time_buckets = c.n_heads, c.max_len, c.time_buckets
        self.ln_in, self.ln_attn = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.f1 = nn.Linear(c.d_model, 4 * c.d_model)  # -> U, V, Q, K
        self.f2 = nn.Linear(c.d_model, c.d_model)
        self.rab_pos = nn.Parameter(torch.zeros(c.n_heads, c.max_len))  # by distance i - j >= 0
        self.rab_time = nn.Parameter(torch.zeros(c.n_heads, c.time_buckets + 1)) if c.time_buckets else None
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, visible: torch.Tensor, time_bucket: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        H, Dh = self.n_heads, D // self.n_heads
        u, v, q, k = F.silu(self.f1(self.ln_in(x))).split(D, dim=2)  # (B, L, D) each
        q, k, v = (t.view(B, L, H, Dh).transpose(1, 2) for t in (q, k, v))  # (B, H, L, Dh)
        logits = q @ k.transpose(2, 3) / math.sqrt(Dh)  # (B, H, L, L)
        distance = (torch.arange(L, device=x.device)[:, None] - torch.arange(L, device=x.device)).clamp(0)  # (L, L)
        logits = logits + self.rab_pos[:, distance]  # (H, L, L) broadcast over B
        if self.rab_time is not None and time_bucket is not None:
            logits = logits + self.rab_time[:, time_bucket].permute(1, 0, 2, 3)  # (B, H, L, L)
        a = F.silu(logits).masked_fill(~visible, 0.0) / self.max_len  # (B, H, L, L)
        attended = (a @ v).transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return x + self.drop(self.f2(self.ln_attn(attended) * u))


class HSTUNet(SequenceNet):
    def __init__(self, n_items: int, c: HSTUConfig) -> None:
        super().__init__(n_items, c.d_model)
        self.max_len, self.time_buckets, self.scale = c.max_len, c.time_buckets, math.sqrt(c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([HSTUBlock(c) for _ in range(c.n_blocks)])
        self.ln_f = nn.LayerNorm(c.d_model)

    def hidden(self, codes: torch.Tensor, times_s: torch.Tensor | None) -> torch.Tensor:
        L = codes.shape[1]
        assert self.max_len >= L, f"sequence of {L} codes is longer than max_len {self.max_len}"
        pad = codes < 0  # (B, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=codes.device).tril()
        visible = (causal & ~pad[:, None, :] & ~pad[:, :, None])[:, None]  # (B, 1, L, L)
        time_bucket = None
        if self.time_buckets and times_s is not None:
            gap = (times_s[:, :, None] - times_s[:, None, :]).abs().float()  # (B, L, L) seconds
            time_bucket = torch.log2(gap + 1).floor().long().clamp(0, self.time_buckets)
        x = self.drop(self.embed(codes) * self.scale).masked_fill(pad[..., None], 0.0)  # (B, L, D)
        for block in self.blocks:
            x = block(x, visible, time_bucket)
        return self.ln_f(x)  # (B, L, D)


@register
class HSTU(SequenceRecommender):
    kind = "hstu"
    Config = HSTUConfig

    def __init__(self, n_items: int, config: HSTUConfig | None = None) -> None:
        super().__init__(n_items, config)
        self.net = HSTUNet(n_items, self.config)
