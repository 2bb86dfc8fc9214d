"""Splits never leak held-out items into training or fold-in, and are reproducible."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.evaluate import strong_generalisation
from models.splits import split_entries, split_fold_in, split_users_holdout


def _pairs(X: sp.csr_matrix) -> set[tuple[int, int]]:
    coo = X.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


def test_split_entries_partitions_the_entries(planted):
    kept, held = split_entries(planted, 0.2, np.random.default_rng(0))
    assert not _pairs(kept) & _pairs(held)
    assert _pairs(kept) | _pairs(held) == _pairs(planted)
    assert held.nnz == round(0.2 * planted.nnz)


def test_split_fold_in_holds_out_a_fifth_of_each_user(planted):
    fold_in, held = split_fold_in(planted, 0.2, np.random.default_rng(0))
    assert not _pairs(fold_in) & _pairs(held)
    assert _pairs(fold_in) | _pairs(held) == _pairs(planted)
    per_user = np.diff(planted.indptr)
    assert np.diff(held.indptr).tolist() == np.floor(0.2 * per_user).astype(int).tolist()


def test_split_users_holdout_separates_users_and_items(planted):
    train, fold_in, held = split_users_holdout(planted, 0.25, seed=3)
    assert train.shape[0] + fold_in.shape[0] == planted.shape[0]
    assert fold_in.shape == held.shape and train.shape[1] == planted.shape[1]
    assert not _pairs(fold_in) & _pairs(held)
    # Held-out users' rows (as multisets of item sets) are absent from training.
    train_rows = {tuple(train[u].indices) for u in range(train.shape[0])}
    heldout_rows = {tuple(np.sort(np.r_[fold_in[u].indices, held[u].indices])) for u in range(held.shape[0])}
    assert not train_rows & heldout_rows


def test_same_seed_same_split_other_seed_other_split(planted):
    a = split_users_holdout(planted, 0.25, seed=1)
    b = split_users_holdout(planted, 0.25, seed=1)
    c = split_users_holdout(planted, 0.25, seed=2)
    assert all((x != y).nnz == 0 for x, y in zip(a, b, strict=True))
    assert (a[2] != c[2]).nnz > 0


def test_strong_protocol_never_leaks_test_items(planted, planted_udata):
    p = strong_generalisation(planted_udata, seed=0)
    assert p.tune_train is p.test_train
    for fold_in, held in ((p.val_input, p.val_target), (p.test_input, p.test_target)):
        assert not _pairs(fold_in) & _pairs(held)
        assert fold_in.shape[1] == p.test_train.shape[1]
    assert p.info["heldout_users"] == round(0.1 * planted.shape[0])
    n_train = p.test_train.shape[0]
    assert n_train + 2 * p.info["heldout_users"] == planted.shape[0]
