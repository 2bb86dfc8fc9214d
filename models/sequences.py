"""The one sequence view of user histories, used by every sequence model, protocol and trainer.

A user's history is an int64 array of item codes (column indices of the catalog), OLDEST
FIRST. Padded batches are LEFT-padded with -1 (`PAD`): row u of a (U, L) batch holds the
user's newest min(len, L) items in its last columns, the newest item in column L - 1, and
-1 in the columns before them. Event times, when known, are int64 seconds since the epoch
in a parallel array (padding times are 0). Bag models read the same histories as a bag:
`Sequences.to_csr()` gives weight 1 per interaction, repeats summed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

PAD = -1  # the code of an empty slot in a padded batch


def pad_left(seqs: list[np.ndarray], max_len: int, fill: int = PAD) -> np.ndarray:
    """(U, L) int64, L = min(max_len, longest): each row's newest L codes, right-aligned, `fill` before."""
    assert max_len >= 1, f"max_len must be >= 1, got {max_len}"
    width = min(max_len, max((len(s) for s in seqs), default=0)) or 1
    out = np.full((len(seqs), width), fill, dtype=np.int64)  # (U, L)
    for row, seq in enumerate(seqs):
        tail = seq[-width:]
        if len(tail):
            out[row, width - len(tail) :] = tail
    return out


def compact_left(codes: torch.Tensor) -> torch.Tensor:
    """The same (B, L) rows with their -1 slots moved to the left, the other codes in their order.

    For rows whose empty slots are interleaved (a bag with holes); rows already left-padded
    are returned unchanged.
    """
    empty = codes < 0  # (B, L)
    # A stable sort on "is filled" puts empties first and keeps the filled slots' order.
    order = torch.sort(~empty, dim=1, stable=True).indices.to(codes.device)  # (B, L)
    return torch.where(empty, PAD, codes).gather(1, order)


@dataclass
class Sequences:
    """Per-user item codes, oldest first, and optionally their event times (int64 seconds)."""

    codes: list[np.ndarray]  # one int64 array per user, oldest first
    n_items: int  # catalog size; every code is in [0, n_items)
    times: list[np.ndarray] | None = None  # same lengths as `codes`, non-decreasing, or None

    def __post_init__(self) -> None:
        if self.times is not None:
            assert len(self.times) == len(self.codes), "times must have one array per user"

    def __len__(self) -> int:
        return len(self.codes)

    def lengths(self) -> np.ndarray:
        return np.array([len(c) for c in self.codes], dtype=np.int64)  # (U,)

    @classmethod
    def from_pairs(
        cls, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, times: np.ndarray | None = None
    ) -> Sequences:
        """Group (user, item[, time]) events by user; within a user, by time when given (stable:
        equal times keep the input order), else in input order."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        # np.lexsort is stable and sorts by its last key first: user, then time.
        order = np.argsort(users, kind="stable") if times is None else np.lexsort((np.asarray(times, np.int64), users))
        starts = np.searchsorted(users[order], np.arange(n_users + 1))
        codes = [items[order[a:b]] for a, b in itertools.pairwise(starts)]
        stamps = None
        if times is not None:
            t = np.asarray(times, np.int64)
            stamps = [t[order[a:b]] for a, b in itertools.pairwise(starts)]
        return cls(codes, n_items, stamps)

    @classmethod
    def from_csr_with_times(cls, X: sp.csr_matrix, T: sp.csr_matrix | None = None) -> Sequences:
        """Rows of X as sequences ordered by the times in T (same sparsity pattern); without T,
        in column order (which is NOT time order; only for bag models or tests)."""
        X = sp.csr_matrix(X)
        coo = X.tocoo()
        times = None
        if T is not None:
            T = sp.csr_matrix(T)
            assert T.shape == X.shape and T.nnz == X.nnz, "T must have X's sparsity pattern"
            times = T.tocoo().data.astype(np.int64)
        return cls.from_pairs(coo.row, coo.col, X.shape[0], X.shape[1], times)

    def to_csr(self) -> sp.csr_matrix:
        """(U, n_items) float32, weight 1 per interaction, repeated items summed."""
        lengths = self.lengths()
        rows = np.repeat(np.arange(len(self.codes)), lengths)
        cols = np.concatenate(self.codes) if len(self.codes) else np.zeros(0, np.int64)
        X = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(self.codes), self.n_items))
        X.sum_duplicates()
        return X

    def subset(self, users: np.ndarray) -> Sequences:
        times = None if self.times is None else [self.times[u] for u in users]
        return Sequences([self.codes[u] for u in users], self.n_items, times)

    def head(self, drop: np.ndarray) -> Sequences:
        """Each user's sequence without its last drop[u] events."""
        cut = [len(c) - int(d) for c, d in zip(self.codes, drop, strict=True)]
        times = None if self.times is None else [t[:n] for t, n in zip(self.times, cut, strict=True)]
        return Sequences([c[:n] for c, n in zip(self.codes, cut, strict=True)], self.n_items, times)

    def batch(self, users: np.ndarray, max_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(codes (B, L) int64 left-padded with -1, times (B, L) int64 or None) of `users`."""
        codes = torch.from_numpy(pad_left([self.codes[u] for u in users], max_len))
        if self.times is None:
            return codes, None
        return codes, torch.from_numpy(pad_left([self.times[u] for u in users], max_len, fill=0))
