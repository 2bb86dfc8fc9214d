"""Step 2 of a round: the window cut at an event time T.

The freshest `trainer_holdout_fraction` of its events, and never anything the serving model trained
on (T >= its own cut-off), are held out: candidate and serving model are scored on what users did
after T, given what they had done before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from stream_worker.model_input import input_rows, sequence_rows
from stream_worker.trainer.window import EventWindow

MIN_EVAL_USERS = 10  # fewer users with events after the cut-off: no comparison worth the name


@dataclass
class TemporalSplit:
    """Training rows before the cut-off; evaluation inputs and targets around it.

    Columns of all three are the window's items (`EventWindow.item_ids`).
    """

    cutoff_ms: int  # events at or after this time are held out
    train: sp.csr_matrix  # (users with events before the cut-off, n_items): model input as the worker builds it
    train_events: int
    eval_inputs: sp.csr_matrix  # (U, n_items): each evaluated user's state at the cut-off
    eval_targets: sp.csr_matrix  # (U, n_items) 0/1: items of their events after it, not in their input
    heldout_events: int
    # The same states in the sequence view (`model_input.sequence_rows`, what the worker's batches
    # hold): (users, recent_items) window item codes, oldest first, left-padded with -1, and times.
    train_codes: np.ndarray  # rows of `train`
    train_times_s: np.ndarray
    eval_codes: np.ndarray  # rows of `eval_inputs`
    eval_times_s: np.ndarray


def temporal_split(
    window: EventWindow, *, holdout_fraction: float, not_before_ms: int, recent_items: int, rate_per_ms: float
) -> TemporalSplit:
    """Cut `window` at the event time leaving `holdout_fraction` of its events after it (but not
    before `not_before_ms`), and build what the models train and are judged on."""
    times = window.times_ms
    # "higher": the cut-off is the time of an actual event, so at least `holdout_fraction` is held out.
    cutoff = max(int(np.quantile(times, 1 - holdout_fraction, method="higher")) if len(times) else 0, not_before_ms)
    before = times < cutoff
    n_users, n_items = len(window.user_ids), len(window.item_ids)
    state_at_cutoff = input_rows(
        window.users[before],
        window.items[before],
        window.weights[before],
        times[before],
        n_users=n_users,
        n_items=n_items,
        recent_items=recent_items,
        rate_per_ms=rate_per_ms,
    )  # (n_users, n_items)
    codes, times_s = sequence_rows(
        window.users[before], window.items[before], times[before], n_users=n_users, recent_items=recent_items
    )  # (n_users, recent_items)
    after = ~before
    targets = sp.csr_matrix(
        (np.ones(int(after.sum()), np.float32), (window.users[after], window.items[after])),
        shape=(n_users, n_items),
    )
    targets.data[:] = 1.0  # repeated events count once
    # The worker never recommends what a user's state holds, so those items cannot be targets.
    targets = (targets - targets.multiply(state_at_cutoff > 0)).tocsr()
    targets.eliminate_zeros()
    has_input = np.diff(state_at_cutoff.indptr) > 0
    evaluated = np.flatnonzero(has_input & (np.diff(targets.indptr) > 0))
    return TemporalSplit(
        cutoff_ms=cutoff,
        train=state_at_cutoff[np.flatnonzero(has_input)],
        train_events=int(before.sum()),
        eval_inputs=state_at_cutoff[evaluated],
        eval_targets=targets[evaluated],
        heldout_events=int(after.sum()),
        train_codes=codes[has_input],
        train_times_s=times_s[has_input],
        eval_codes=codes[evaluated],
        eval_times_s=times_s[evaluated],
    )


def reindex_codes(codes: np.ndarray, from_ids: list[str], to_ids: list[str]) -> np.ndarray:
    """Sequence rows (U, L) with item codes moved from one vocabulary to another; items unknown
    there become -1 (holes a sequence model's input closes up, `models.sequences.compact_left`)."""
    position = {item_id: i for i, item_id in enumerate(to_ids)}
    mapping = np.array([position.get(item_id, -1) for item_id in from_ids] + [-1], np.int64)  # [-1]: -1 -> -1
    return mapping[codes]


def reindex_columns(X: sp.csr_matrix, from_ids: list[str], to_ids: list[str]) -> sp.csr_matrix:
    """X with columns moved from one item vocabulary to another; items unknown there are dropped."""
    position = {item_id: i for i, item_id in enumerate(to_ids)}
    mapping = np.array([position.get(item_id, -1) for item_id in from_ids], np.int64)
    coo = X.tocoo()
    new_cols = mapping[coo.col]
    keep = new_cols >= 0
    return sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], new_cols[keep])), shape=(X.shape[0], len(to_ids)), dtype=np.float32
    )
