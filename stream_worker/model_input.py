"""The input a model sees for one user, defined once for the worker and the trainer.

A user's input row is made of their `recent_items` most recent events (in arrival order,
as the worker's ring buffer keeps them): each event's weight (`interaction_weight`:
the event type's weight, ratings scaled by value / 5, kept in half precision) times the time
decay 2^(-age / half_life), where age is measured from the user's newest event to the event's
time in whole seconds, summed per item.

The worker's state calls `decayed` when it snapshots a batch (`UserState.batch`); the trainer
calls `input_rows`, which keeps the same events and applies the same `decayed`, to build the
matrices it trains and evaluates on. So a model is trained and judged on the signal it is served.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

# How the worker's state stores each interaction (state.py), and so what every model input is
# made of: the weight in half precision (about 3 significant digits, at most 65,504) and the
# event time in whole seconds (uint32: 1970 to 2106). With the int32 item code that is 10 bytes
# per interaction: a user's 100 recent interactions take 1,000 bytes. `decayed` applies the same
# rounding to whatever it is given, so the trainer's input rounds exactly as the worker's does.
WEIGHT_DTYPE = np.float16
TIME_DTYPE = np.uint32
_WEIGHT_MAX = float(np.finfo(WEIGHT_DTYPE).max)
_TIME_MAX_S = int(np.iinfo(TIME_DTYPE).max)


def interaction_weight(event_weights: dict[str, float], event_type: str, value: float | None) -> float:
    """Weight of one interaction: its type's weight, scaled by rating / 5 for ratings.

    Shared by the worker's state and the trainer's interaction matrix, so the model is
    trained on the same signal it is served.
    """
    weight = event_weights.get(event_type, event_weights["OTHER"])
    if event_type == "RATING" and value is not None:
        weight *= value / 5.0
    return weight


def stored_weights(weights: np.ndarray | float) -> np.ndarray:
    """Interaction weights as the state holds them: half precision, clipped to its range."""
    return np.clip(weights, -_WEIGHT_MAX, _WEIGHT_MAX).astype(WEIGHT_DTYPE)


def stored_times(times_ms: np.ndarray | int) -> np.ndarray:
    """Event times as the state holds them: whole seconds since the epoch, clipped to uint32."""
    return np.clip(np.floor_divide(times_ms, 1000), 0, _TIME_MAX_S).astype(TIME_DTYPE)


def times_ms_of(stored: np.ndarray) -> np.ndarray:
    """Stored times back in int64 milliseconds (rounded down to the second)."""
    return stored.astype(np.int64) * 1000


def decay_rate_per_ms(half_life_s: float) -> float:
    """ln 2 / half-life in ms: the weight multiplier is exp(-rate * age_ms); 0 = no decay."""
    return math.log(2) / (half_life_s * 1000) if half_life_s > 0 else 0.0


def decayed(weights: np.ndarray, times_ms: np.ndarray, newest_ms: np.ndarray, rate_per_ms: float) -> np.ndarray:
    """weights * exp(-rate * (newest - time)) as float32; an event newer than `newest_ms` is not boosted.

    Weights and times are first rounded as the state stores them (`stored_weights`,
    `stored_times`; a no-op for values that come from the state); `newest_ms` is exact.
    Shapes broadcast: (B, L) weights and times with (B, 1) newest in the worker, (n,) with (n,)
    in the trainer.
    """
    weights = stored_weights(weights).astype(np.float32)
    if not rate_per_ms:
        return weights
    age_ms = np.maximum(newest_ms - times_ms_of(stored_times(times_ms)), 0)
    return (weights * np.exp(-rate_per_ms * age_ms)).astype(np.float32)


def input_rows(
    users: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    times_ms: np.ndarray,
    *,
    n_users: int,
    n_items: int,
    recent_items: int,
    rate_per_ms: float,
) -> sp.csr_matrix:
    """(n_users, n_items) float32 CSR: what the worker would feed the model for each user.

    `users`, `items` are integer codes, one entry per event, in arrival order (a user's events
    keep their relative order). Per user only the last `recent_items` events count, decayed to
    the newest event time among all of that user's events (the worker's `last_event_ms`), and
    repeated items add up.
    """
    n = len(users)
    if n == 0:
        return sp.csr_matrix((n_users, n_items), dtype=np.float32)
    order = np.argsort(users, kind="stable")  # grouped by user, arrival order kept within a user
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])  # first event of each user
    ends = np.r_[starts[1:], n]
    group = np.repeat(np.arange(len(starts)), ends - starts)  # (n,) which user group each event is in
    newest = np.maximum.reduceat(times_ms[order], starts)[group]  # (n,) the user's newest event time
    recent = (ends[group] - np.arange(n)) <= recent_items  # the last `recent_items` of each group
    keep = order[recent]
    values = decayed(weights[keep], times_ms[keep], newest[recent], rate_per_ms)
    X = sp.csr_matrix((values, (users[keep], items[keep])), shape=(n_users, n_items), dtype=np.float32)
    X.sum_duplicates()
    return X


def sequence_rows(
    users: np.ndarray, items: np.ndarray, times_ms: np.ndarray, *, n_users: int, recent_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n_users, L) int64, times_s (n_users, L) int64), L = recent_items: the sequence view
    of what the worker holds for each user (`models.sequences`: oldest first, LEFT-padded with -1,
    the newest event in the last column), with the event times in whole seconds as stored.

    Same events as `input_rows`: a user's last `recent_items` events in arrival order (`users`,
    `items` integer codes, one entry per event). The worker's `UserState.batch` gives the same rows.
    """
    codes = np.full((n_users, recent_items), -1, np.int64)
    times_s = np.zeros((n_users, recent_items), np.int64)
    n = len(users)
    if n == 0:
        return codes, times_s
    order = np.argsort(users, kind="stable")  # grouped by user, arrival order kept within a user
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    ends = np.r_[starts[1:], n]
    group = np.repeat(np.arange(len(starts)), ends - starts)
    from_end = ends[group] - np.arange(n)  # 1 for a user's newest event, 2 for the one before, ...
    recent = from_end <= recent_items
    keep = order[recent]
    column = recent_items - from_end[recent]  # the newest event lands in the last column
    codes[users[keep], column] = items[keep]
    times_s[users[keep], column] = stored_times(times_ms[keep]).astype(np.int64)
    return codes, times_s
