"""The trainer and the worker feed a model the same input (model_input.py)."""

import numpy as np

from stream_worker.codec import UserEvent
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.model_input import decay_rate_per_ms, input_rows, interaction_weight, sequence_rows
from stream_worker.worker.state import UserState

DAY_MS = 24 * 3600 * 1000
TYPES = ("VIEW", "CLICK", "PURCHASE", "RATING")


def test_trainer_rows_equal_what_the_worker_state_feeds_the_model():
    rng = np.random.default_rng(0)
    n, n_users, n_items, recent, half_life_s = 400, 7, 30, 5, 2 * 24 * 3600.0
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    kinds = rng.integers(0, len(TYPES), n)
    times = 1_700_000_000_000 + np.sort(rng.integers(0, 20 * DAY_MS, n))
    times[::7] -= DAY_MS  # some events arrive late: the newest is the latest time, not the last arrival
    events = [UserEvent(f"e{i}", f"u{users[i]}", f"i{items[i]}", TYPES[kinds[i]], 3.0, int(times[i])) for i in range(n)]

    state = UserState(
        max_users=100, recent_items=recent, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=half_life_s
    )
    state.apply((e, 0, -1) for e in events)
    batch = state.batch([f"u{u}" for u in range(n_users)])
    from_state = np.zeros((n_users, n_items), np.float32)
    for b in range(n_users):
        for code, weight in zip(batch.item_codes[b], batch.weights[b], strict=True):
            if code >= 0:
                from_state[b, int(state.items.ids[code][1:])] += weight

    weights = np.array([interaction_weight(DEFAULT_EVENT_WEIGHTS, e.event_type, e.value) for e in events], np.float32)
    rows = input_rows(
        users,
        items,
        weights,
        times,
        n_users=n_users,
        n_items=n_items,
        recent_items=recent,
        rate_per_ms=decay_rate_per_ms(half_life_s),
    )
    assert np.count_nonzero(from_state) > n_users  # decayed, several items per user
    np.testing.assert_allclose(rows.toarray(), from_state, rtol=1e-5)


def test_only_the_last_recent_items_count_and_decay_halves_per_half_life():
    users = np.array([0, 0, 0, 1])
    items = np.array([0, 1, 2, 0])
    times = np.array([0, DAY_MS, 2 * DAY_MS, 5], np.int64)
    rows = input_rows(
        users,
        items,
        np.ones(4, np.float32),
        times,
        n_users=2,
        n_items=3,
        recent_items=2,
        rate_per_ms=decay_rate_per_ms(24 * 3600.0),
    ).toarray()
    np.testing.assert_allclose(rows, [[0.0, 0.5, 1.0], [1.0, 0.0, 0.0]], rtol=1e-6)


def test_trainer_and_worker_round_weights_and_event_times_alike():
    """Half-precision weights and times in whole seconds (what the state stores) on both sides:
    with a 5 s half-life and times 1 ms apart from second boundaries, any difference shows."""
    times = np.array([1_700_000_000_999, 1_700_000_001_001, 1_700_000_003_500, 1_700_000_004_000], np.int64)
    values = [3.3, 4.7, 1.1, 2.9]  # RATING weights 4 x value / 5 are not exact in float16
    events = [
        UserEvent(f"e{i}", "u0", f"i{i}", "RATING", v, int(t))
        for i, (v, t) in enumerate(zip(values, times, strict=True))
    ]
    state = UserState(max_users=10, recent_items=4, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=5.0)
    state.apply((e, 0, -1) for e in events)
    batch = state.batch(["u0"])
    from_state = np.zeros(4, np.float32)
    for code, weight in zip(batch.item_codes[0], batch.weights[0], strict=True):
        from_state[int(state.items.ids[code][1:])] += weight
    weights = np.array([interaction_weight(DEFAULT_EVENT_WEIGHTS, "RATING", v) for v in values], np.float32)
    rows = input_rows(
        np.zeros(4, np.int64), np.arange(4), weights, times,
        n_users=1, n_items=4, recent_items=4, rate_per_ms=decay_rate_per_ms(5.0),
    ).toarray()[0]  # fmt: skip
    np.testing.assert_allclose(rows, from_state, rtol=1e-6)


def test_trainer_sequences_equal_the_worker_states_sequence_view():
    """What a sequence model is trained and judged on (model_input.sequence_rows, the trainer) is
    exactly what the worker's batches give it: the same codes in the same order, the same times."""
    rng = np.random.default_rng(1)
    n, n_users, n_items, recent = 300, 9, 40, 6
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    times = 1_700_000_000_000 + np.sort(rng.integers(0, 20 * DAY_MS, n))
    times[::5] -= DAY_MS  # late arrivals: arrival order is the order, not event time
    users[:2] = n_users - 1  # one user with fewer events than `recent`: left padding
    users[users == n_users - 1] = [n_users - 1] * 2 + [0] * (int((users == n_users - 1).sum()) - 2)
    events = [UserEvent(f"e{i}", f"u{users[i]}", f"i{items[i]}", "VIEW", None, int(times[i])) for i in range(n)]

    state = UserState(max_users=100, recent_items=recent, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=0)
    state.apply((e, 0, -1) for e in events)
    batch = state.batch([f"u{u}" for u in range(n_users)])
    ids = state.items.ids
    from_state = np.array([[int(ids[c][1:]) if c >= 0 else -1 for c in row] for row in batch.item_codes])

    codes, times_s = sequence_rows(users, items, times, n_users=n_users, recent_items=recent)
    assert (codes[n_users - 1] == -1).sum() == recent - 2, "a short history is left-padded"
    np.testing.assert_array_equal(codes, from_state)
    np.testing.assert_array_equal(times_s, batch.times_s.astype(np.int64))
