import numpy as np
import pytest

from stream_worker.codec import UserEvent
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.model_input import interaction_weight
from stream_worker.worker.state import UserState

DAY_MS = 24 * 3600 * 1000


def state(**kwargs) -> UserState:
    defaults = {"max_users": 100, "recent_items": 4, "event_weights": DEFAULT_EVENT_WEIGHTS, "decay_half_life_s": 0}
    return UserState(**{**defaults, **kwargs})


def ev(user: str, item: str, t: int, kind: str = "VIEW", value: float | None = None, eid: str | None = None):
    return UserEvent(eid or f"{user}-{item}-{t}", user, item, kind, value, t)


def codes_to_ids(s: UserState, codes: np.ndarray) -> list[str]:
    return [s.items.ids[c] for c in codes if c >= 0]


def test_weights_follow_event_type_and_changed_users_are_reported():
    s = state()
    changed = s.apply(
        [(ev("a", "x", 1, "PURCHASE"), 0, -1), (ev("b", "y", 2, "RATING", 2.5), 1, -1), (ev("a", "z", 3), 0, -1)]
    )
    assert changed == {"a", "b"}
    batch = s.batch(["a", "b"])
    a_weights = dict(zip(codes_to_ids(s, batch.item_codes[0]), batch.weights[0][batch.item_codes[0] >= 0], strict=True))
    assert a_weights == {"x": 5.0, "z": 1.0}
    assert batch.weights[1].max() == pytest.approx(4.0 * 2.5 / 5)
    assert interaction_weight(DEFAULT_EVENT_WEIGHTS, "RATING", 5.0) == 4.0
    assert list(batch.events_seen) == [2, 1]


def test_only_the_most_recent_items_are_kept_but_every_event_is_counted():
    s = state(recent_items=3)
    s.apply([(ev("a", f"i{n}", n), 0, -1) for n in range(7)])
    batch = s.batch(["a"])
    assert sorted(codes_to_ids(s, batch.item_codes[0])) == ["i4", "i5", "i6"]
    assert batch.events_seen[0] == 7
    assert batch.last_event_ids == ["a-i6-6"]


def test_the_newest_event_is_the_latest_event_time_even_when_it_arrives_early():
    s = state()
    s.apply([(ev("a", "new", 200, eid="late-in-time"), 0, -1), (ev("a", "old", 100, eid="early-in-time"), 0, -1)])
    batch = s.batch(["a"])
    assert batch.last_event_ids == ["late-in-time"] and batch.last_event_ms[0] == 200


def test_time_decay_halves_the_weight_after_one_half_life():
    s = state(decay_half_life_s=24 * 3600)
    s.apply([(ev("a", "old", 0, "CLICK"), 0, -1), (ev("a", "new", DAY_MS, "CLICK"), 0, -1)])
    batch = s.batch(["a"])
    held = batch.item_codes[0] >= 0
    by_item = dict(zip(codes_to_ids(s, batch.item_codes[0]), batch.weights[0][held], strict=True))
    assert by_item["new"] == pytest.approx(2.0)
    assert by_item["old"] == pytest.approx(1.0, rel=1e-5)


def test_the_least_recently_active_user_is_evicted_at_the_bound():
    s = state(max_users=3)
    s.apply([(ev(u, "x", 1), 0, -1) for u in ("a", "b", "c")])
    s.apply([(ev("a", "y", 2), 0, -1)])  # a is active again: b is now the least recent
    s.batch(["a", "b", "c"])  # scored: any of them may now be evicted
    s.apply([(ev("d", "x", 3), 0, -1)])
    assert "b" not in s and all(u in s for u in ("a", "c", "d"))
    assert len(s) == 3 and s.evicted_total == 1
    assert s.batch(["d"]).events_seen[0] == 1  # b's slot was wiped before d got it


def test_memory_grows_in_steps_and_never_beyond_max_users():
    s = state(max_users=3000, recent_items=2)
    for start in range(0, 5000, 500):  # the worker scores what changed between two polls
        s.batch(list(s.apply([(ev(f"u{n}", "x", n), 0, -1) for n in range(start, start + 500)])))
    assert len(s) == 3000 and s.evicted_total == 2000
    assert s._item_codes.shape == (3000, 2)
    assert "u4999" in s and "u1999" not in s


def test_users_of_revoked_partitions_are_forgotten():
    s = state()
    s.apply([(ev("a", "x", 1), 0, -1), (ev("b", "x", 1), 1, -1), (ev("c", "x", 1), 2, -1)])
    assert sorted(s.forget_partitions({0, 2})) == ["a", "c"]
    assert "b" in s and "a" not in s and "c" not in s


def test_the_item_table_is_bounded_and_reclaims_items_no_held_user_references():
    s = state(recent_items=4, max_items=10)
    s.apply([(ev("a", "keep", 1), 0, -1)])
    for n in range(1000):  # one user streams 1,000 distinct items: only their last four stay referenced
        s.apply([(ev("b", f"new{n}", n + 2), 0, -1)])
    assert len(s.items) <= 10
    assert s.items_dropped_total == 0
    batch = s.batch(["a", "b"])
    assert codes_to_ids(s, batch.item_codes[0]) == ["keep"]
    assert sorted(codes_to_ids(s, batch.item_codes[1])) == sorted(f"new{n}" for n in range(996, 1000))


def test_a_full_item_table_of_referenced_items_keeps_the_event_without_its_item():
    s = state(recent_items=4, max_items=4)
    s.apply([(ev("a", f"x{n}", n), 0, -1) for n in range(4)])
    s.apply([(ev("b", "y", 9), 0, -1)])
    assert s.items_dropped_total == 1 and "b" in s and len(s.items) == 4


def test_users_waiting_to_be_scored_are_never_evicted():
    s = state(max_users=2)
    s.apply([(ev("a", "x", 1), 0, -1)])
    s.batch(["a"])  # a was scored: evictable
    s.apply([(ev("b", "x", 2), 0, -1), (ev("c", "x", 3), 0, -1)])  # b waits; c needs a slot: a goes, not b
    assert "b" in s and "c" in s and "a" not in s
    with pytest.raises(RuntimeError, match="wait to be scored"):
        s.apply([(ev("d", "x", 4), 0, -1)])  # b and c both wait: no one may go


def test_a_replayed_event_is_skipped_and_a_snapshot_restores_the_user_exactly():
    s = state(recent_items=4)
    events = [(ev("a", f"i{n}", n), 0, n) for n in range(6)]  # six events, offsets 0..5
    s.apply(events[:5])
    snap = s.snapshot("a")
    restored = state(recent_items=4)
    restored.restore(snap)
    restored.apply(events)  # after a crash the log replays from an older commit: 0..4 are skipped
    assert restored.replayed_total == 5
    s.apply(events[5:])
    mine, theirs = s.batch(["a"]), restored.batch(["a"])
    assert theirs.events_seen[0] == mine.events_seen[0] == 6
    assert codes_to_ids(restored, theirs.item_codes[0]) == codes_to_ids(s, mine.item_codes[0])


def test_a_user_with_100_recent_items_costs_1000_bytes_of_interactions():
    s = state(recent_items=100)
    s.apply([(ev("a", f"i{n}", n * 1000), 0, n) for n in range(150)])
    assert s.bytes_per_user() == {"interactions": 1000, "all": 1028}  # + events_seen, last time, partition, offset


def test_weights_and_times_are_held_as_the_model_input_defines_them():
    s = state(recent_items=4)
    huge, before_1970, ms = 10**9, -5_000, 1_700_000_000_123
    s.apply([(ev("a", "big", ms, "RATING", huge), 0, 0), (ev("a", "old", before_1970), 0, 1), (ev("a", "x", ms), 0, 2)])
    snap = s.snapshot("a")
    assert snap.weights.tolist() == [65504.0, 1.0, 1.0]  # float16's largest, not inf
    assert snap.times_ms.tolist() == [1_700_000_000_000, 0, 1_700_000_000_000]  # whole seconds, from 1970
    assert snap.last_event_ms == ms  # the user's newest time stays exact
    restored = state(recent_items=4)
    restored.restore(snap)
    again = restored.snapshot("a")  # what the changelog carries restores exactly
    assert again.weights.tolist() == snap.weights.tolist() and again.times_ms.tolist() == snap.times_ms.tolist()


def test_a_batch_is_the_sequence_view_oldest_first_left_padded_also_after_the_ring_wraps():
    s = state(recent_items=4)
    s.apply([(ev("a", f"i{n}", 1000 * n), 0, -1) for n in range(2)])  # 2 of 4 slots
    s.apply([(ev("b", f"i{n}", 1000 * n), 0, -1) for n in range(6)])  # wrapped: the last 4 held
    batch = s.batch(["a", "b"])
    ids = s.items.ids
    assert [ids[c] if c >= 0 else None for c in batch.item_codes[0]] == [None, None, "i0", "i1"]
    assert [ids[c] for c in batch.item_codes[1]] == ["i2", "i3", "i4", "i5"]
    assert batch.times_s[1].tolist() == [2, 3, 4, 5] and batch.times_s[0].tolist() == [0, 0, 0, 1]
