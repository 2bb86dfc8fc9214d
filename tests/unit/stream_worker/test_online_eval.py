"""Online hit-rate: the model's last list and the popularity list of the same moment, per version."""

import numpy as np
from prometheus_client import CollectorRegistry

from stream_worker.codec import UserEvent
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.worker.online_eval import OnlineEvaluator, Popularity
from stream_worker.worker.state import UserState


def ev(user: str, item: str, n: int) -> tuple[UserEvent, int, int]:
    return UserEvent(f"e{n}", user, item, "VIEW", None, n), 0, -1


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_popularity_follows_decayed_counts():
    pop = Popularity(half_life_events=2)
    pop.add(np.array([0, 0, 0, 1]))
    assert pop.top(2).tolist() == [0, 1]
    pop.add(np.array([2, 2, 2, 2, 2, 2]))  # recent events outweigh older ones
    assert pop.top(1).tolist() == [2]
    assert sorted(pop.top(10).tolist()) == [0, 1, 2]  # only items seen


def test_each_event_is_judged_against_the_lists_sent_before_it():
    registry = CollectorRegistry()
    state = UserState(max_users=10, recent_items=3, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=0)
    online = OnlineEvaluator(top_k=2, max_users=10, registry=registry)
    history = [ev("a", "pop1", 0), ev("b", "pop1", 1), ev("b", "pop2", 2), ev("c", "pop2", 3), ev("c", "pop3", 4)]
    state.apply(history)
    online.observe(history, state.items)  # nobody has a list yet: nothing judged
    assert value(registry, "streamrec_online_events_total", model_version="1") == 0

    batch = state.batch(["a"])
    online.sent(batch, [["x", "pop3"]], model_version=1)
    # a's popularity list leaves out pop1 (in a's state, which the model could not recommend either).
    later = [ev("a", "x", 5), ev("a", "pop2", 6), ev("a", "y", 7), ev("z", "pop2", 8)]
    state.apply(later)
    online.observe(later, state.items)
    assert value(registry, "streamrec_online_events_total", model_version="1") == 3  # z was never sent a list
    assert value(registry, "streamrec_online_hits_total", model_version="1", recommender="model") == 1  # x
    assert value(registry, "streamrec_online_hits_total", model_version="1", recommender="popularity") == 1  # pop2


def test_lists_are_kept_for_at_most_max_users():
    state = UserState(max_users=10, recent_items=2, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=0)
    online = OnlineEvaluator(top_k=1, max_users=2, registry=CollectorRegistry())
    events = [ev(u, "i", n) for n, u in enumerate("abc")]
    state.apply(events)
    online.sent(state.batch(list("abc")), [["i"]] * 3, model_version=1)
    assert list(online._last) == ["b", "c"]


def test_counts_and_lists_by_old_item_codes_are_dropped_when_the_item_table_is_compacted():
    state = UserState(
        max_users=10, recent_items=1, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=0, max_items=3
    )
    online = OnlineEvaluator(top_k=2, max_users=10, registry=CollectorRegistry())
    first = [ev("a", "i1", 0), ev("a", "i2", 1), ev("b", "i3", 2)]  # the table is full; nobody holds i1
    state.apply(first)
    online.observe(first, state.items)
    online.sent(state.batch(["a", "b"]), [["i3"], ["i2"]], model_version=1)
    later = [ev("c", "i4", 3)]  # i1's code is reclaimed: codes are renumbered
    state.apply(later)
    online.observe(later, state.items)
    assert state.items.generation == 1
    assert online.popularity.top(5).tolist() == [state.items.code_of["i4"]]  # no count of i1..i3 under new codes
    assert len(online._last) == 0
