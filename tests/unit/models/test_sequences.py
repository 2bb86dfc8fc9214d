"""The sequence view: left padding with -1, newest last, time order, the bag view."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from models.sequences import Sequences, compact_left, pad_left


def test_pad_left_keeps_the_newest_items_right_aligned():
    out = pad_left([np.array([1, 2, 3, 4]), np.array([7]), np.array([], np.int64)], max_len=3)
    assert out.dtype == np.int64
    assert out.tolist() == [[2, 3, 4], [-1, -1, 7], [-1, -1, -1]]


def test_compact_left_moves_holes_left_and_keeps_order():
    codes = torch.tensor([[5, -1, 3, -1, 9], [-1, -1, 1, 2, 3], [-1, -1, -1, -1, -1]])
    assert compact_left(codes).tolist() == [[-1, -1, 5, 3, 9], [-1, -1, 1, 2, 3], [-1] * 5]


def test_from_pairs_orders_each_user_by_time_stably():
    users = np.array([1, 0, 1, 1, 0])
    items = np.array([10, 20, 11, 12, 21])
    times = np.array([5, 3, 1, 5, 3])
    seqs = Sequences.from_pairs(users, items, n_users=3, n_items=30, times=times)
    assert [c.tolist() for c in seqs.codes] == [[20, 21], [11, 10, 12], []]  # ties keep input order
    assert seqs.times is not None and seqs.times[1].tolist() == [1, 5, 5]
    no_times = Sequences.from_pairs(users, items, n_users=2, n_items=30)
    assert [c.tolist() for c in no_times.codes] == [[20, 21], [10, 11, 12]]  # line order is time order


def test_to_csr_sums_repeats_and_from_csr_with_times_inverts_it():
    seqs = Sequences([np.array([2, 0, 2]), np.array([1])], n_items=3)
    X = seqs.to_csr()
    assert X.toarray().tolist() == [[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]
    T = sp.csr_matrix(np.array([[9, 0, 4], [0, 1, 0]]))
    back = Sequences.from_csr_with_times(sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]])), T)
    assert [c.tolist() for c in back.codes] == [[2, 0], [1]]


def test_batch_and_head():
    seqs = Sequences([np.array([1, 2, 3]), np.array([4, 5])], 6, [np.array([1, 2, 3]), np.array([7, 8])])
    codes, times = seqs.batch(np.array([1, 0]), max_len=5)
    assert codes.tolist() == [[-1, 4, 5], [1, 2, 3]] and times is not None and times.tolist() == [[0, 7, 8], [1, 2, 3]]
    assert [c.tolist() for c in seqs.head(np.array([1, 2])).codes] == [[1, 2], []]
