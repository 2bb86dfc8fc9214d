"""Train / validation / test splits of an interaction matrix, all seeded.

Every function returns matrices over the same item columns as its input, and the parts of
one split never share a (user, item) entry: a held-out item is never in training or fold-in.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.sequences import Sequences


def split_entries(X: sp.csr_matrix, frac: float, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(kept, held_out): a random `frac` of X's nonzero entries, chosen globally, goes to held_out.

    This is how the CFGAN ML-100K split was made (a global random 80/20 of the ratings), so
    the same function makes the validation part of its training set.
    """
    X = sp.csr_matrix(X)
    held = np.zeros(X.nnz, dtype=bool)
    held[rng.choice(X.nnz, size=round(frac * X.nnz), replace=False)] = True
    return _mask_entries(X, ~held), _mask_entries(X, held)


def split_fold_in(X: sp.csr_matrix, frac: float, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(fold_in, held_out) per user: floor(frac * n_u) of each user's items are held out (Liang et al.).

    A user with fewer than 1 / frac items keeps them all in fold_in and holds out nothing,
    as in the Mult-VAE preprocessing, so the evaluation skips that user.
    """
    X = sp.csr_matrix(X)
    counts = np.diff(X.indptr)  # (n_users,)
    n_held = np.floor(frac * counts).astype(np.int64)
    # A random rank within each user's row; an entry is held out when its rank < n_held of its row.
    row = np.repeat(np.arange(X.shape[0]), counts)
    order = np.lexsort((rng.random(X.nnz), row))  # rows stay grouped, shuffled within each row
    rank = np.empty(X.nnz, dtype=np.int64)
    rank[order] = np.arange(X.nnz) - X.indptr[row[order]]
    held = rank < n_held[row]
    return _mask_entries(X, ~held), _mask_entries(X, held)


def split_users_holdout(
    X: sp.csr_matrix, frac_users: float, seed: int, *, frac_items: float = 0.2
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """(train, fold_in, held_out): strong generalisation, as the streaming trainer needs it.

    A random `frac_users` of the users (at least one) are held out: their rows leave training
    and are split per user into fold_in (given to the model) and held_out (to be predicted),
    `frac_items` of each held-out user's items going to held_out. Shapes: train
    (n_train_users, n_items); fold_in and held_out (n_heldout_users, n_items).
    """
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(X)
    n_heldout = max(1, round(frac_users * X.shape[0]))
    assert n_heldout < X.shape[0], f"holding out {n_heldout} of {X.shape[0]} users leaves none to train on"
    users = rng.permutation(X.shape[0])
    fold_in, held_out = split_fold_in(X[users[:n_heldout]], frac_items, rng)
    return X[np.sort(users[n_heldout:])], fold_in, held_out


def split_users_holdout_in_time(
    seqs: Sequences, frac_users: float, seed: int, *, frac_items: float = 0.2
) -> tuple[Sequences, Sequences, sp.csr_matrix]:
    """(train, fold_in, held_out) as `split_users_holdout`, for time-ordered histories: the
    held-out users' newest `frac_items` of events (at least one) are the targets, their older
    events the input in order. train and fold_in are Sequences; held_out is (n_heldout, n_items)
    0/1, items already in the user's input removed (they are never recommended)."""
    rng = np.random.default_rng(seed)
    long_enough = np.flatnonzero(seqs.lengths() >= 2)
    n_heldout = max(1, round(frac_users * len(seqs)))
    assert n_heldout < len(long_enough), f"holding out {n_heldout} users needs more users with >= 2 events"
    heldout = np.sort(rng.permutation(long_enough)[:n_heldout])
    train = np.setdiff1d(np.arange(len(seqs)), heldout)
    held = seqs.subset(heldout)
    drop = np.maximum(1, np.floor(frac_items * held.lengths())).astype(np.int64)  # (U,) newest events held out
    fold_in = held.head(drop)
    rows, cols = [], []
    for u, (codes, n) in enumerate(zip(held.codes, drop, strict=True)):
        targets = np.setdiff1d(codes[len(codes) - n :], fold_in.codes[u])
        rows += [u] * len(targets)
        cols += targets.tolist()
    held_out = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(heldout), seqs.n_items))
    return seqs.subset(train), fold_in, held_out


def _mask_entries(X: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """X with only the stored entries where `keep` is True (same shape)."""
    coo = X.tocoo()
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=X.shape)
