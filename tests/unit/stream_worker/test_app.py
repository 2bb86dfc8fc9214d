"""The worker's commit path with fake Kafka clients: offsets follow acknowledgements, never lead them.

The model is a real (untrained) Mult-VAE checkpoint; only the broker is faked, so the order of
produce, acknowledgement and commit is under the test's control.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from confluent_kafka import KafkaError, TopicPartition

from models import checkpoint
from models.base import REGISTRY
from stream_worker.codec import SingleObjectCodec, UserEvent, from_user_event
from stream_worker.config import load_settings
from stream_worker.worker.loop import Worker
from tests.unit.stream_worker.fakes import FakeConsumer, FakeMessage, FakeProducer

TOPIC = "events"
ITEMS = [f"i{n}" for n in range(30)]
NOW_MS = 1_700_000_000_000


class FakeWatcher:
    def take(self):
        return None

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


class FakeKafkaWorker(Worker):
    """A real Worker whose clients are fakes (no threads, no network)."""

    def _new_producer(self):
        return self.fake_producer

    def _new_consumer(self):
        return self.fake_consumer

    def _new_watcher(self):
        return FakeWatcher()

    def _start_probe(self) -> None:
        self.kafka_reachable.set()

    def _restore(self, partitions) -> None:  # nothing in the (absent) changelog
        pass


@pytest.fixture
def worker(tmp_path):
    model = REGISTRY["multvae"](len(ITEMS), REGISTRY["multvae"].Config())
    checkpoint.save(model, tmp_path / "models", item_ids=ITEMS, name="multvae")
    settings = load_settings(
        model_dir=tmp_path / "models",
        events_topic=TOPIC,
        metrics_port=0,
        device="cpu",
        torch_threads=0,
        max_batch_wait_ms=0,
        commit_interval_ms=0,
        dlq_max_bytes=1_000_000,
        max_clock_skew_s=1e9,
    )
    w = FakeKafkaWorker(settings)
    w.fake_producer = FakeProducer()
    w.fake_consumer = FakeConsumer(w.fake_producer.log)
    with ExitStack() as resources:
        w._open(resources)
        w._running = True
        w._on_assign(None, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
        yield w


CODEC = SingleObjectCodec("user_event")
CODEC_OUT = SingleObjectCodec("recommendation")


def event(partition: int, offset: int, user: str, item: str = "i1") -> FakeMessage:
    value = CODEC.encode(from_user_event(UserEvent(f"e{offset}", user, item, "CLICK", None, NOW_MS + offset)))
    return FakeMessage(TOPIC, partition, offset, user.encode(), value)


def turns(worker: Worker, n: int = 3) -> None:
    for _ in range(n):
        worker._turn()


def test_no_offset_is_committed_before_every_record_behind_it_is_acknowledged(worker):
    producer, consumer = worker.fake_producer, worker.fake_consumer
    consumer.queue = [event(0, o, f"u{o % 3}") for o in range(6)] + [FakeMessage(TOPIC, 0, 6, b"u0", b"garbage")]
    turns(worker)
    assert (
        sorted(r.topic for r in producer.records) == ["recommendations"] * 3 + ["user-events.dlq"] + ["user-state"] * 3
    )
    assert consumer.commits == [], "committed before the broker acknowledged anything"

    producer.ack(topic="recommendations")
    producer.ack(topic="user-events.dlq")  # the users' state (changelog) is still unacknowledged
    turns(worker)
    assert consumer.commits == [], "committed before the changelog was acknowledged"

    producer.ack()
    turns(worker)
    assert consumer.committed_offset(TOPIC, 0) == 7
    # Every commit comes after the acknowledgement of every record produced before it.
    for i, (kind, _) in enumerate(producer.log):
        if kind == "commit":
            before = [k for k, _ in producer.log[:i]]
            assert before.count("ack") == before.count("produce")


def test_nothing_is_committed_after_a_delivery_error_until_the_record_is_acknowledged(worker):
    producer, consumer = worker.fake_producer, worker.fake_consumer
    consumer.queue = [event(0, 0, "a"), event(1, 0, "b")]
    turns(worker)
    producer.ack(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), only=1, topic="recommendations")
    producer.ack()
    consumer.queue = [event(1, 1, "b")]  # later work completes ...
    turns(worker)
    producer.ack()
    turns(worker)
    assert consumer.commits == [], "an offset was committed past a refused record"
    assert not worker.ready()[0] and "refused" in worker.ready()[1]

    worker.publisher._retry_at = 0  # the back-off is over: the refused record is produced again
    turns(worker)
    producer.ack()
    turns(worker)
    assert consumer.committed_offset(TOPIC, 0) == 1 and consumer.committed_offset(TOPIC, 1) == 2


def test_revoked_partitions_are_flushed_acknowledged_and_committed_before_they_leave(worker):
    producer, consumer = worker.fake_producer, worker.fake_consumer
    # The revocation comes right after a poll: the users wait in the batcher, nothing is scored yet.
    worker._ingest([event(0, 0, "a"), event(0, 1, "a"), event(1, 0, "b")])
    assert producer.records == [] and consumer.commits == []

    producer.auto_ack = True  # the broker answers while the worker waits in the revoke callback
    worker._on_revoke(consumer, [TopicPartition(TOPIC, 0)])
    assert {r.key for r in producer.records} == {b"a", b"b"}
    assert consumer.committed_offset(TOPIC, 0) == 2, "the revoked partition's work was not committed"
    assert "a" not in worker.state and (TOPIC, 0) not in worker.assigned


def test_lost_partitions_are_never_committed_from_here(worker):
    producer, consumer = worker.fake_producer, worker.fake_consumer
    consumer.queue = [event(0, 0, "a"), event(1, 0, "b")]
    turns(worker)
    worker._on_lost(consumer, [TopicPartition(TOPIC, 0)])
    producer.ack()
    turns(worker)
    assert consumer.committed_offset(TOPIC, 0) is None
    assert consumer.committed_offset(TOPIC, 1) == 1


def test_full_polls_coalesce_each_users_events_and_a_poll_that_did_not_fill_up_is_scored_at_once(worker):
    producer, consumer = worker.fake_producer, worker.fake_consumer
    worker.settings = worker.settings.model_copy(update={"poll_max_records": 4})
    worker.batcher.max_wait_s = 60  # only a poll that did not fill up can make this flush happen
    consumer.queue = [event(0, o, f"u{o % 3}") for o in range(10)]
    turns(worker, 2)  # two full polls of 4: the worker is behind, so it keeps taking records
    assert producer.records == []
    turns(worker, 1)  # 2 records: everything that had arrived is in, score it now
    lists = [CODEC_OUT.decode(r.value) for r in producer.records if r.topic == "recommendations"]
    assert sorted((r["user_id"], r["events_reflected"]) for r in lists) == [("u0", 4), ("u1", 3), ("u2", 3)]


def test_acknowledged_offsets_are_committed_at_most_every_commit_interval(worker, monkeypatch):
    import time as real_time
    from types import SimpleNamespace

    import stream_worker.worker.commit as commit_module
    import stream_worker.worker.loop as app_module

    now = [1000.0]
    clock = SimpleNamespace(monotonic=lambda: now[0], perf_counter=real_time.perf_counter, time=real_time.time)
    monkeypatch.setattr(app_module, "time", clock)
    monkeypatch.setattr(commit_module, "time", clock)
    worker.commit.interval_s = 0.1  # STREAMREC_COMMIT_INTERVAL_MS=100
    producer, consumer = worker.fake_producer, worker.fake_consumer
    consumer.queue = [event(0, 0, "a")]
    turns(worker)
    producer.ack()
    turns(worker)
    assert consumer.committed_offset(TOPIC, 0) == 1  # the first commit goes at once
    consumer.queue = [event(0, 1, "a")]
    turns(worker)
    producer.ack()
    now[0] += 0.05
    turns(worker)
    assert consumer.committed_offset(TOPIC, 0) == 1, "committed again within the interval"
    now[0] += 0.06
    turns(worker)
    assert consumer.committed_offset(TOPIC, 0) == 2
