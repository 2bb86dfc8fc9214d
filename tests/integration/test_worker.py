"""The worker end to end on a real broker, real Avro bytes and a real torch model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest
from confluent_kafka import Producer

from models import checkpoint
from stream_worker.codec import SingleObjectCodec, UserEvent, from_user_event
from stream_worker.devtools.replay import publish_events
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.kafka.topics import ensure_topics
from stream_worker.trainer.service import Trainer
from stream_worker.worker.publish import DLQ_MESSAGE, DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC
from tests.integration.kafka_helpers import (
    committed_offsets,
    drained,
    end_offsets,
    newest_per_user,
    read_recommendations,
    read_topic,
    running_worker,
    train_synthetic_model,
    wait_until,
)

pytestmark = pytest.mark.integration

WORLD = SyntheticWorld(n_users=60, n_items=150, seed=3)
TOP_K = 10


@pytest.fixture
def settings(make_settings, tmp_path):
    settings = make_settings(top_k=TOP_K, model_dir=tmp_path / "models", max_batch_size=32)
    ensure_topics(settings, partitions=3)
    train_synthetic_model(WORLD, settings.model_dir)
    return settings


def events_of(n: int, seed: int, start_ms: int = 1_700_000_000_000) -> list[UserEvent]:
    return list(WORLD.events(n, seed=seed, start_ms=start_ms))


def by_user(events: list[UserEvent]) -> dict[str, list[UserEvent]]:
    grouped: dict[str, list[UserEvent]] = defaultdict(list)
    for event in events:
        grouped[event.user_id].append(event)
    return grouped


def assert_fresh_recommendations(newest: dict[str, dict], events: list[UserEvent], *, model_version: int) -> None:
    """Every user got K items, none already seen, from the newest model, reflecting their latest event."""
    known_items = set(WORLD.item_ids())
    for user_id, history in by_user(events).items():
        assert user_id in newest, f"{user_id} received no recommendation"
        record = newest[user_id]
        recommended = [item["item_id"] for item in record["items"]]
        assert len(recommended) == TOP_K
        assert not set(recommended) & {e.item_id for e in history}, f"{user_id} was offered an item already seen"
        assert set(recommended) <= known_items
        assert record["last_event_id"] == history[-1].event_id
        assert record["last_event_time"] == history[-1].event_time_ms
        assert record["model_version"] == model_version
        scores = [item["score"] for item in record["items"]]
        assert scores == sorted(scores, reverse=True)


def test_every_user_gets_fresh_unseen_recommendations_and_offsets_reach_the_end(settings):
    events = events_of(3000, seed=1)
    publish_events(settings, events)
    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 60, "committed offsets to reach the end offsets")
        assert worker.metrics.events._value.get() == len(events)

    newest = newest_per_user(read_recommendations(settings))
    assert_fresh_recommendations(newest, events, model_version=1)
    for user_id, history in by_user(events).items():
        assert newest[user_id]["events_reflected"] == len(history)
    assert read_topic(settings, settings.dlq_topic) == []


def test_events_for_items_the_model_does_not_know_stay_in_state_and_are_ignored(settings):
    known = events_of(200, seed=2)
    now_ms = int(time.time() * 1000)
    unknown = [
        UserEvent(f"new-{n}", WORLD.user_id(n), f"brand-new-item-{n}", "PURCHASE", None, now_ms + n) for n in range(5)
    ]
    publish_events(settings, known + unknown)
    with running_worker(settings):
        wait_until(lambda: drained(settings), 60, "the worker to drain the topic")

    newest = newest_per_user(read_recommendations(settings))
    for event in unknown:
        record = newest[event.user_id]
        assert record["last_event_id"] == event.event_id  # the unknown item is in the user's state ...
        assert len(record["items"]) == TOP_K  # ... and the model still scores the user
        assert event.item_id not in {item["item_id"] for item in record["items"]}


def test_malformed_records_go_to_the_dead_letter_topic_and_good_ones_keep_flowing(settings):
    codec = SingleObjectCodec("user_event")
    good = events_of(500, seed=3)
    valid = from_user_event(good[0])
    bad = {
        b"garbage": (b"u1", b"not avro at all"),
        b"wrong-fingerprint": (b"u1", b"\xc3\x01" + bytes(8) + codec.encode(valid)[10:]),
        b"truncated": (b"u1", codec.encode(valid)[:-3]),
        b"empty-user": (b"", codec.encode({**valid, "user_id": ""})),
        b"key-mismatch": (b"someone-else", codec.encode(valid)),
        b"rating-without-value": (valid["user_id"].encode(), codec.encode({**valid, "event_type": "RATING"})),
        b"empty-value": (b"u1", b""),  # (a null value is a deletion request, not a dead letter)
    }
    producer = Producer(settings.kafka_common())
    half = len(good) // 2
    publish_events(settings, good[:half], producer=producer)
    for name, (key, value) in bad.items():
        producer.produce(settings.events_topic, value, key, headers=[("case", name)])
    publish_events(settings, good[half:], producer=producer)

    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 60, "the worker to drain the topic")
        assert worker.metrics.events._value.get() == len(good)

    dead = {r.headers["case"]: r for r in read_topic(settings, settings.dlq_topic)}
    assert set(dead) == set(bad)
    for name, record in dead.items():
        key, value = bad[name]
        assert (record.key or b"") == key and record.value == value, f"{name}: original bytes not kept"
        assert record.headers[DLQ_TOPIC] == settings.events_topic.encode()
        assert int(record.headers[DLQ_OFFSET]) >= 0 and int(record.headers[DLQ_PARTITION]) >= 0
        assert record.headers[DLQ_MESSAGE], f"{name}: no reason given"
    assert dead[b"garbage"].headers[DLQ_REASON] == b"decode"
    assert dead[b"wrong-fingerprint"].headers[DLQ_MESSAGE].startswith(b"unknown writer schema fingerprint")
    assert dead[b"key-mismatch"].headers[DLQ_REASON] == b"invalid"
    assert_fresh_recommendations(newest_per_user(read_recommendations(settings)), good, model_version=1)


def test_a_model_announced_by_the_trainer_is_picked_up_with_no_event_lost(settings, make_settings):
    now_ms = int(time.time() * 1000)
    before, after = events_of(2500, seed=4, start_ms=now_ms - 60_000), events_of(1500, seed=5, start_ms=now_ms)
    publish_events(settings, before)
    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 60, "the worker to drain the first events")
        # Margin 100%: this test is about the swap, so the candidate is promoted whatever its quality.
        trainer_settings = settings.model_copy(
            update={"trainer_min_events": 100, "trainer_epochs": 5, "promotion_margin": 1.0}
        )
        assert Trainer(trainer_settings).round() is not None
        wait_until(lambda: worker.inference.model_version == 2, 60, "the worker to swap in version 2")
        publish_events(settings, after)
        wait_until(lambda: drained(settings), 60, "the worker to drain the events after the swap")
        assert worker.metrics.events._value.get() == len(before) + len(after)
        assert worker.metrics.model_swaps._value.get() == 1

    newest = newest_per_user(read_recommendations(settings))
    assert_fresh_recommendations(newest, after, model_version=2)
    for user_id, history in by_user(before + after).items():
        assert newest[user_id]["events_reflected"] == len(history), f"{user_id}: an event was lost in the swap"


def test_the_trainer_trains_a_sasrec_from_the_log_and_the_worker_serves_it(settings):
    """The sequence model end to end: trained by the periodic trainer from the event topic (the
    state's sequence view), announced, swapped in while the worker runs, and serving fresh lists."""
    now_ms = int(time.time() * 1000)
    before, after = events_of(2500, seed=14, start_ms=now_ms - 60_000), events_of(1000, seed=15, start_ms=now_ms)
    publish_events(settings, before)
    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 60, "the worker to drain the first events")
        trainer_settings = settings.model_copy(
            update={
                "trainer_model_kind": "sasrec",
                "trainer_min_events": 100,
                "trainer_epochs": 3,
                "promotion_margin": 1.0,  # this test is about training and serving the kind, not the gate
            }
        )
        path = Trainer(trainer_settings).round()
        assert path is not None
        meta = checkpoint.read_metadata(path)
        assert meta.kind == "sasrec" and meta.hyperparameters["max_len"] == settings.state_recent_items
        wait_until(lambda: worker.inference.model_version == 2, 60, "the worker to swap in the SASRec")
        assert worker.inference.model.reads_order
        publish_events(settings, after)
        wait_until(lambda: drained(settings), 60, "the worker to drain the events after the swap")

    newest = newest_per_user(read_recommendations(settings))
    assert_fresh_recommendations(newest, after, model_version=2)


def _worker_process(settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen([sys.executable, "-m", "stream_worker", "worker"], env=env, stderr=subprocess.PIPE)


def test_sigterm_mid_stream_loses_nothing_and_a_restart_resumes_from_committed_offsets(settings):
    events = events_of(4000, seed=6)
    worker = _worker_process(settings)
    publish_events(settings, events[:2000])
    wait_until(lambda: sum(max(o, 0) for o in committed_offsets(settings).values()) > 0, 60, "a first commit")
    # The second half trickles in over ~4 s; SIGTERM lands once the worker has committed into it,
    # so events are still arriving when it stops (the worker drains faster than they come).
    stream = threading.Thread(target=publish_events, args=(settings, events[2000:]), kwargs={"rate": 500})
    stream.start()
    try:
        past_first_half = lambda: sum(max(o, 0) for o in committed_offsets(settings).values()) > 2000  # noqa: E731
        wait_until(past_first_half, 60, "a commit past the first 2000 events")
        assert stream.is_alive(), "the stream ended before SIGTERM: it would not land mid-stream"
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    finally:
        stream.join(timeout=60)
    assert worker.returncode == 0, stderr.decode()[-2000:]

    # A clean stop publishes and commits everything it consumed: each user's last list reflects
    # exactly their events below the committed offset, counted once.
    committed = committed_offsets(settings)
    first_run_end = end_offsets(settings, settings.recommendations_topic)
    first = newest_per_user(read_recommendations(settings))
    codec = SingleObjectCodec("user_event")
    consumed_ids = {
        codec.decode(r.value)["event_id"]
        for r in read_topic(settings, settings.events_topic)
        if r.offset < committed[r.partition]
    }
    assert 0 < len(consumed_ids) < len(events), "SIGTERM must land mid-stream for this test to mean anything"
    consumed_by_user = by_user([e for e in events if e.event_id in consumed_ids])
    for user_id, history in consumed_by_user.items():
        assert first[user_id]["last_event_id"] == history[-1].event_id
        assert first[user_id]["events_reflected"] == len(history)

    restarted = _worker_process(settings)
    try:
        wait_until(lambda: drained(settings), 60, "the restarted worker to drain the topic")
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.communicate(timeout=60)
    assert restarted.returncode == 0

    second = newest_per_user(read_recommendations(settings, start=first_run_end))
    rest_by_user = by_user([e for e in events if e.event_id not in consumed_ids])
    all_by_user = by_user(events)
    for user_id, history in rest_by_user.items():
        assert second[user_id]["last_event_id"] == history[-1].event_id
        # The restarted worker restored each user from the state topic: their whole history counts.
        assert second[user_id]["events_reflected"] == len(all_by_user[user_id])
