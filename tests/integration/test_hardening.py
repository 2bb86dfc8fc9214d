"""Nothing on the wire stops or hijacks a worker: a ~1 MB poison record, hostile announcements,
a model swap while events flow, a broker that is away at start-up and then for 90 seconds.

Real broker, real Avro bytes, a real torch model. Each test is bounded in events and time.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from models import checkpoint
from models.base import REGISTRY
from stream_worker.channel.announce import announce
from stream_worker.codec import MODEL_UPDATE, make_codec
from stream_worker.devtools.replay import publish_events
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.kafka.local import DEFAULT_HOME, LocalKafka, free_port
from stream_worker.kafka.topics import ensure_topics
from stream_worker.trainer.service import Trainer
from stream_worker.worker.publish import DLQ_ORIGINAL_SHA256, DLQ_ORIGINAL_SIZE, DLQ_REASON, DLQ_TRUNCATED
from tests.integration.kafka_helpers import (
    drained,
    newest_per_user,
    read_recommendations,
    read_topic,
    running_worker,
    train_synthetic_model,
    wait_until,
)
from tests.integration.test_worker import by_user

pytestmark = pytest.mark.integration

WORLD = SyntheticWorld(n_users=60, n_items=150, seed=3)


@pytest.fixture
def settings(make_settings, tmp_path):
    settings = make_settings(top_k=10, model_dir=tmp_path / "models", max_batch_size=32)
    ensure_topics(settings, partitions=3)
    train_synthetic_model(WORLD, settings.model_dir, epochs=5)
    return settings


def now_events(n: int, seed: int, start_ms: int | None = None):
    return list(WORLD.events(n, seed=seed, start_ms=start_ms or int(time.time() * 1000) - n))


def assert_every_event_reflected(settings, events) -> None:
    newest = newest_per_user(read_recommendations(settings))
    for user_id, history in by_user(events).items():
        assert newest[user_id]["events_reflected"] == len(history), f"{user_id}: an event was lost or doubled"
        assert newest[user_id]["last_event_id"] == history[-1].event_id


def test_a_one_megabyte_poison_record_is_dead_lettered_truncated_and_the_stream_goes_on(settings):
    poison = os.urandom(1_040_000)  # not Avro; under the broker's default limit of 1,048,588 bytes
    good = now_events(400, seed=1)
    producer = Producer({**settings.kafka_common(), "message.max.bytes": 1_048_576})
    publish_events(settings, good[:200], producer=producer)
    producer.produce(settings.events_topic, poison, b"poisoner")
    publish_events(settings, good[200:], producer=producer)

    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 90, "the worker to drain past the poison record")
        assert worker.metrics.dead_letters_truncated._value.get() == 1

    (dead,) = read_topic(settings, settings.dlq_topic)
    assert dead.headers[DLQ_REASON] == b"decode" and dead.headers[DLQ_TRUNCATED] == b"value"
    assert dead.headers[DLQ_ORIGINAL_SIZE] == b"1040000"
    assert dead.headers[DLQ_ORIGINAL_SHA256].decode() == hashlib.sha256(poison).hexdigest()
    assert dead.value == poison[: len(dead.value)] and dead.key == b"poisoner"
    assert_every_event_reflected(settings, good)


def _announce_raw(settings, **fields) -> None:
    codec = make_codec(MODEL_UPDATE, settings.model_updates_topic, None)
    base = {
        "model_name": "multvae",
        "model_kind": "multvae",
        "version": 2,
        "checkpoint_uri": "",
        "created_at": int(time.time() * 1000),
        "window_start": None,
        "window_end": None,
        "events_trained": 0,
        "metrics": {},
        "weights_sha256": None,
        "action": None,
    }
    producer = Producer(settings.kafka_common())
    producer.produce(settings.model_updates_topic, codec.encode({**base, **fields}), b"multvae")
    assert producer.flush(10) == 0


def _copy_of_serving(model_dir: Path, to: Path, version: int, items: list[str] | None = None) -> Path:
    """Version 1's model saved again as `version` under `to` (with a fresh model if `items` are given)."""
    serving = checkpoint.load(checkpoint.version_dir(model_dir, 1))
    ids = items or serving.metadata.item_ids
    model = serving.model if items is None else REGISTRY["multvae"](len(ids), REGISTRY["multvae"].Config())
    return checkpoint.save(model, to, item_ids=ids, name="multvae", version=version)


def test_hostile_announcements_are_rejected_by_reason_and_a_genuine_file_uri_is_swapped_in(settings, tmp_path):
    model_dir = settings.model_dir
    events = now_events(600, seed=2)
    publish_events(settings, events[:300])

    with running_worker(settings) as worker:  # serves v1; the other versions appear while it runs
        wait_until(lambda: drained(settings), 60, "the worker to drain the first events")
        _copy_of_serving(model_dir, tmp_path / "evil", version=2)
        fifo = _copy_of_serving(model_dir, model_dir, version=3)
        fifo_sha = _sha(fifo)
        (fifo / checkpoint.WEIGHTS_FILE).unlink()
        os.mkfifo(fifo / checkpoint.WEIGHTS_FILE)  # reading it would block forever
        huge = _copy_of_serving(model_dir, tmp_path / "elsewhere", version=10**15)
        strangers = _copy_of_serving(model_dir, model_dir, version=4, items=[f"x{n}" for n in range(150)])
        genuine = _copy_of_serving(model_dir, model_dir, version=5)
        rejected = worker.metrics.model_updates_rejected
        hostile = [
            ("location", {"checkpoint_uri": f"{model_dir}/../evil/v000002", "weights_sha256": "0" * 64}),
            ("file", {"checkpoint_uri": str(fifo), "version": 3, "weights_sha256": fifo_sha}),
            ("version", {"checkpoint_uri": str(huge), "version": 10**15, "weights_sha256": _sha(huge)}),
            ("vocabulary", {"checkpoint_uri": str(strangers), "version": 4, "weights_sha256": _sha(strangers)}),
            ("hash", {"checkpoint_uri": str(genuine), "version": 5, "weights_sha256": "f" * 64}),
        ]
        for reason, fields in hostile:
            _announce_raw(settings, **fields)
            wait_until(lambda r=reason: rejected.labels(r)._value.get() == 1, 30, f"a rejection for {reason}")
        assert worker.inference.model_version == 1 and worker.ready()[0], worker.ready()[1]
        assert worker.healthy()[0] and worker.watcher.alive()

        _announce_raw(settings, checkpoint_uri=genuine.resolve().as_uri(), version=5, weights_sha256=_sha(genuine))
        wait_until(lambda: worker.inference.model_version == 5, 30, "the genuine file:// announcement to be served")
        publish_events(settings, events[300:])
        wait_until(lambda: drained(settings), 60, "the worker to drain the rest")
    assert_every_event_reflected(settings, events)
    assert newest_per_user(read_recommendations(settings))[events[-1].user_id]["model_version"] == 5


def _sha(folder: Path) -> str:
    return checkpoint.weights_sha256(folder)


def test_a_model_swap_while_events_flow_loses_and_doubles_nothing(settings):
    events = now_events(4000, seed=3)
    publish_events(settings, events[:1500])
    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 60, "the worker to drain the history")
        flowing = threading.Thread(target=publish_events, args=(settings, events[1500:]), kwargs={"rate": 400})
        flowing.start()
        trainer = settings.model_copy(
            update={"trainer_min_events": 100, "trainer_epochs": 2, "promotion_margin": 1.0}  # always promoted
        )
        assert Trainer(trainer).round() is not None
        wait_until(lambda: worker.inference.model_version == 2, 60, "the swap to version 2")
        assert flowing.is_alive(), "the stream ended before the swap: it did not happen while events flowed"
        flowing.join(timeout=60)
        wait_until(lambda: drained(settings), 60, "the worker to drain the stream")
        assert worker.metrics.model_swaps._value.get() == 1
    versions = {r["model_version"] for r in read_recommendations(settings)}
    assert versions == {1, 2}
    assert_every_event_reflected(settings, events)


@pytest.fixture
def own_broker(tmp_path):
    """A broker of this test's own, which it stops and starts."""
    broker = LocalKafka(port=free_port(), home=tmp_path / "kafka", jars=DEFAULT_HOME / "jars")
    broker.start()
    try:
        yield broker
    finally:
        broker.destroy()


OUTAGE_S = 90  # longer than the 60 s the worker used to wait before exiting


def test_a_broker_away_at_start_up_and_then_for_90_seconds_is_waited_out_with_nothing_lost(
    make_settings, tmp_path, own_broker
):
    settings = make_settings(
        bootstrap_servers=own_broker.bootstrap, top_k=10, model_dir=tmp_path / "models", max_batch_size=32
    )
    ensure_topics(settings, partitions=3)
    train_synthetic_model(WORLD, settings.model_dir, epochs=5)
    own_broker.stop()

    events = now_events(2000, seed=4)
    with running_worker(settings) as worker:
        wait_until(lambda: worker._running, 30, "the worker to start without a broker")
        assert worker.ready() == (False, f"cannot reach Kafka at {own_broker.bootstrap}")
        own_broker.start()
        wait_until(lambda: worker.ready()[0], 60, f"readiness once the broker is back ({worker.ready()[1]})")

        publish_events(settings, events[:1000])
        wait_until(lambda: worker.metrics.events._value.get() >= 500, 60, "events to flow")
        own_broker.stop()  # mid-stream: some lists are produced but unacknowledged
        stopped = time.monotonic()
        while time.monotonic() - stopped < OUTAGE_S:  # the outage itself: checked every second, not waited on
            assert worker.healthy()[0], worker.healthy()[1]
            worker.stop.wait(1)
        assert not worker.ready()[0]
        assert worker.metrics.kafka_reachable._value.get() == 0

        own_broker.start()
        wait_until(lambda: worker.ready()[0], 90, f"readiness after the outage ({worker.ready()[1]})")
        publish_events(settings, events[1000:])
        wait_until(lambda: drained(settings), 90, "the worker to drain everything after the outage")
        # The watcher lived through it too: a new version is still picked up.
        new = _copy_of_serving(settings.model_dir, settings.model_dir, version=2)
        announce(
            Producer(settings.kafka_common()),
            settings,
            checkpoint.read_metadata(new),
            new,
            events_trained=0,
            window=None,
            metrics={},
        )
        wait_until(lambda: worker.inference.model_version == 2, 60, "a swap after the outage")
    assert_every_event_reflected(settings, events)
