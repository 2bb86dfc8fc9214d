"""What SASRec and HSTU share: the padded-code embedding, the training loop, scoring, warm start.

A sequence model's network maps codes (B, L), LEFT-padded with -1 (see `models.sequences`),
and optional event times (B, L) to hidden states (B, L, D); position t's state predicts the
item at t + 1. Item embeddings are tied: the input table has n_items rows plus one padding
row (index n_items), and scores are hidden · item_embeddings[:n_items]^T.

Training (SASRec+CE, Klenitskiy & Vasilev, RecSys 2023): each epoch visits every user with at
least two events once, in batches of users; a user's sequence is truncated to its last
max_len + 1 events, the first max_len are the input, the last max_len the targets, and the
loss is the full-softmax cross-entropy over the catalog at every non-padded position.
Batches are padded only to their longest member (users of similar length are batched
together), which keeps an epoch on short-sequence data cheap.
"""

from __future__ import annotations

import time
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import EpochCallback, FitReport, Recommender
from models.sequences import PAD, Sequences, compact_left

ITEM_TABLE = "net.item_emb.weight"  # the one tensor whose rows are items (plus the padding row)


class SequenceNet(nn.Module):
    """The part of a network every sequence model has: the tied item table and the padding code."""

    def __init__(self, n_items: int, d_model: int) -> None:
        super().__init__()
        self.n_items = n_items
        # Row n_items is the padding row: it gets no gradient and stays zero.
        self.item_emb = nn.Embedding(n_items + 1, d_model, padding_idx=n_items)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[n_items].zero_()

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L, D) item embeddings of codes (B, L), -1 -> the padding row."""
        return self.item_emb(torch.where(codes < 0, self.n_items, codes))

    def hidden(self, codes: torch.Tensor, times_s: torch.Tensor | None) -> torch.Tensor:
        """(B, L, D): each position's state after reading the codes up to it."""
        raise NotImplementedError

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item_emb.weight[: self.n_items].T  # (..., n_items)


def time_gap_buckets(times_s: torch.Tensor, pad: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """(B, L) int64 in [0, n_buckets]: 1 + floor(log2(1 + gap in seconds to the previous event)),
    capped; 0 for the first event of a row and for padding."""
    gap = (times_s[:, 1:] - times_s[:, :-1]).clamp_min(0).float()  # (B, L - 1)
    bucket = torch.log2(gap + 1).floor().long().clamp(0, n_buckets - 1) + 1
    bucket = F.pad(bucket, (1, 0))  # (B, L): the first column has no previous event
    first = pad[:, :-1] & ~pad[:, 1:]  # the slot before it is padding -> a row's first event
    bucket[:, 1:] = torch.where(first, 0, bucket[:, 1:])
    return torch.where(pad, 0, bucket)


def attention_mask(pad: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool, True = may attend: causal, keys not padding, and every query its own
    slot. The last rule is what keeps a padded query row from having no key at all, which
    would make softmax attention NaN (0/0) in eval mode; real rows never see padded keys,
    so extra left padding does not change their output."""
    L = pad.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=pad.device).tril()  # (L, L)
    eye = torch.eye(L, dtype=torch.bool, device=pad.device)
    return ((causal & ~pad[:, None, :]) | eye)[:, None]  # (B, 1, L, L)


def remap_catalogue(tensors: dict[str, torch.Tensor], source: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors for a new catalog: new item i takes old row source[i], or a fresh N(0, 0.02)
    row when source[i] == -1; the padding row goes last. Every other tensor is kept."""
    old = tensors[ITEM_TABLE]  # (n_old + 1, D)
    n_old = old.shape[0] - 1
    source = np.asarray(source, np.int64)
    assert source.max(initial=-1) < n_old, f"source names an item >= the old catalog's {n_old}"
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(len(source) + 1, old.shape[1], generator=gen, dtype=old.dtype) * 0.02  # (n_new + 1, D)
    known = torch.from_numpy(np.flatnonzero(source >= 0))
    rows[known] = old[torch.from_numpy(source[source >= 0])].to(rows.device)
    rows[-1] = 0.0
    return tensors | {ITEM_TABLE: rows}


def grow_catalogue(old_tensors: dict[str, torch.Tensor], new_n_items: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Warm-start tensors for a catalog that grew: items 0..n_old-1 keep their rows, items
    n_old..new_n_items-1 get fresh ones (the new items' codes must come after the old)."""
    n_old = old_tensors[ITEM_TABLE].shape[0] - 1
    assert new_n_items >= n_old, f"the catalog shrank ({n_old} -> {new_n_items}); use remap_catalogue"
    source = np.concatenate([np.arange(n_old), np.full(new_n_items - n_old, -1)])
    return remap_catalogue(old_tensors, source, seed)


def user_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Users with >= 2 events in random batches of similar length (sorted within windows of 50 batches)."""
    users = rng.permutation(np.flatnonzero(lengths >= 2))
    window = 50 * batch_size
    batches = []
    for lo in range(0, len(users), window):
        chunk = users[lo : lo + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class SequenceRecommender(Recommender):
    """Base of the sequence models: subclasses build `self.net` (a SequenceNet) in __init__.

    Config fields read here: max_len, lr, weight_decay, batch_size, epochs.
    """

    reads_order = True
    net: SequenceNet

    def fit(self, X: sp.csr_matrix, *, seed: int = 0, on_epoch: EpochCallback | None = None) -> FitReport:
        raise TypeError(
            f"{self.kind} learns from time-ordered histories, not a matrix: call fit_sequences(Sequences) "
            "(models.sequences), or train_model with a Sequences"
        )

    def fit_sequences(self, seqs: Sequences, *, seed: int = 0, on_epoch: EpochCallback | None = None) -> FitReport:
        assert seqs.n_items == self.n_items, f"sequences have {seqs.n_items} items, the model {self.n_items}"
        c = self.config
        torch.manual_seed(seed)  # weights were drawn in __init__; this seeds dropout
        rng = np.random.default_rng(seed)
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        report, start = FitReport(), time.perf_counter()
        self.curve = report.curve  # the training curve so far, for progress displays
        lengths = seqs.lengths()
        for epoch in range(1, c.epochs + 1):
            self.net.train()
            total, count, epoch_start = 0.0, 0, time.perf_counter()
            for users in user_batches(lengths, c.batch_size, rng):
                codes, times = seqs.batch(users, c.max_len + 1)  # (B, L + 1)
                codes = codes.to(self.device)
                inputs, targets = codes[:, :-1], codes[:, 1:]  # (B, L): position t predicts t + 1
                times_in = None if times is None else times[:, :-1].to(self.device)
                h = self.net.hidden(inputs, times_in)  # (B, L, D)
                valid = (inputs >= 0) & (targets >= 0)  # (B, L)
                logits = self.net.logits(h[valid])  # (N, n_items), N = predicted positions
                loss = F.cross_entropy(logits, targets[valid])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * int(valid.sum())
                count += int(valid.sum())
            report.curve.append(
                {"epoch": epoch, "loss": total / max(count, 1), "epoch_seconds": time.perf_counter() - epoch_start}
            )
            if on_epoch is not None and on_epoch(self, epoch) is False:
                break
        self.net.eval()
        report.seconds = time.perf_counter() - start
        return report

    @torch.inference_mode()
    def score_sequences(self, codes: torch.Tensor, times_s: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_items): the last position's hidden state · item embeddings^T."""
        self.net.eval()
        # The newest max_len columns, less the leading columns that are padding in every row: padded
        # keys are masked and positions count back from the newest item, so the scores are the same
        # and attention costs O(longest row^2), not O(max_len^2) (the worker's batches are padded
        # to the state's recent_items, most users hold fewer).
        codes = codes[:, -self.config.max_len :]
        held = (codes >= 0).any(dim=0)  # (L,)
        first = int(held.int().argmax()) if bool(held.any()) else codes.shape[1] - 1
        codes = codes[:, first:].to(self.device)
        times_s = None if times_s is None else times_s[:, -self.config.max_len :][:, first:].to(self.device)
        h = self.net.hidden(codes, times_s)  # (B, L, D)
        scores = self.net.logits(h[:, -1])  # (B, n_items)
        assert torch.isfinite(scores).all(), f"{self.kind} produced non-finite scores"
        return scores

    def score_bag(self, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """A bag's slots read as a sequence in slot order (oldest first); zero-weight and -1 slots are skipped."""
        return self.score_sequences(compact_left(torch.where(weights > 0, index, PAD)), None)

    def score(self, X: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{self.kind} reads item order, which a (B, n_items) row has lost: call score_sequences")

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items()})

    def to(self, device: torch.device | str) -> Self:
        self.net.to(device)
        return super().to(device)

    @staticmethod
    def grow_catalogue(old_tensors: dict[str, torch.Tensor], new_n_items: int, seed: int = 0) -> dict[str, Any]:
        return grow_catalogue(old_tensors, new_n_items, seed)
