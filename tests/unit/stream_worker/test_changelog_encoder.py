"""The changelog's batch encoder writes exactly what the per-user codec writes."""

import numpy as np

from stream_worker.codec import UserEvent
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.worker import changelog
from stream_worker.worker.state import UserState


def test_batch_records_are_byte_for_byte_the_codecs_and_decode_to_the_snapshots():
    rng = np.random.default_rng(0)
    state = UserState(
        max_users=100, recent_items=5, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=0, max_items=40
    )
    kinds = ("VIEW", "CLICK", "PURCHASE", "RATING")
    events = [
        UserEvent(f"é{k}", f"u{rng.integers(12)}", f"ítem-{rng.integers(60)}", kinds[k % 4], 3.3, 1_700_000_000_123 + k)
        for k in range(300)
    ]  # non-ASCII ids, ring buffers wrapped, and a full item table that reclaims codes on the way
    encoder = changelog.ChangelogEncoder("user-events")
    for lo in range(0, len(events), 50):
        state.apply((e, 1, lo + i) for i, e in enumerate(events[lo : lo + 50]))
        users = sorted({e.user_id for e in events[lo : lo + 50]})
        records = encoder.encode(state, users)
        for user_id, (partition, value) in zip(users, records, strict=True):
            snap = state.snapshot(user_id)
            assert value == changelog.encode(snap, "user-events")
            assert partition == snap.partition == 1
    fresh = UserState(max_users=10, recent_items=5, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=0)
    fresh.apply([(UserEvent("x", "one-event", "ítem-1", "VIEW", None, 5_999), 2, 7)])  # held < recent_items
    [(partition, value)] = changelog.ChangelogEncoder("user-events").encode(fresh, ["one-event"])
    assert value == changelog.encode(fresh.snapshot("one-event"), "user-events") and partition == 2
    topic, snap = changelog.decode(value)
    assert topic == "user-events" and snap.item_ids == ["ítem-1"] and snap.times_ms.tolist() == [5_000]
    assert (snap.events_seen, snap.offset, snap.last_event_ms) == (1, 7, 5_999)
