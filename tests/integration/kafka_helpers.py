"""Helpers for integration tests against a real broker: bounded waits, reading topics back,
running a worker on a thread, and a small real model trained on the synthetic world."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import scipy.sparse as sp
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from models import checkpoint
from models.train import train_model
from stream_worker.codec import RECOMMENDATION, make_codec
from stream_worker.config import Settings
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.kafka.topics import committed_and_end_offsets
from stream_worker.worker.loop import Worker


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail the test after `timeout_s` naming `what`.

    A transient broker error (e.g. the group coordinator still loading on a fresh broker)
    counts as "not yet".
    """
    deadline = time.monotonic() + timeout_s
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return condition()
    except KafkaException as exc:
        error = exc.args[0]
        if error.retriable() or error.code() in (
            KafkaError.NOT_COORDINATOR,
            KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
            KafkaError._TIMED_OUT,
        ):
            return False
        raise


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            **settings.kafka_common(),
            "group.id": f"test-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,  # the end, even where it is a transaction marker
            "isolation.level": "read_committed",
        }
    )


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = _consumer(settings)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The worker group's committed offsets on the events topic (-1001 = none yet)."""
    return committed_and_end_offsets(settings)[0]


def drained(settings: Settings) -> bool:
    """Committed offsets have reached the end of every events partition."""
    committed, ends = committed_and_end_offsets(settings)
    return committed == ends


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def read_topic(
    settings: Settings, topic: str, start: dict[int, int] | None = None, timeout_s: float = 30
) -> list[Record]:
    """Every record from `start` (default: the beginning) to the current end, in partition order."""
    ends = end_offsets(settings, topic)
    start = start or {}
    consumer = _consumer(settings)
    records: list[Record] = []
    try:
        todo = {p: end for p, end in ends.items() if start.get(p, 0) < end}
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            assert time.monotonic() < deadline, f"could not read {topic} to its end within {timeout_s}s"
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF and msg.offset() >= todo.get(msg.partition(), 0):
                        todo.pop(msg.partition(), None)
                    continue
                records.append(Record(msg.partition(), msg.offset(), msg.key(), msg.value(), dict(msg.headers() or [])))
                if msg.offset() + 1 >= todo.get(msg.partition(), 0):
                    todo.pop(msg.partition(), None)
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def read_recommendations(settings: Settings, start: dict[int, int] | None = None) -> list[dict]:
    """Decoded recommendation records, oldest first within each partition (so within each user)."""
    codec = make_codec(RECOMMENDATION, settings.recommendations_topic, settings.schema_registry_url)
    records = read_topic(settings, settings.recommendations_topic, start)
    return [codec.decode(r.value) for r in records if r.value is not None]  # (None: a forgotten user's tombstone)


def newest_per_user(records: list[dict]) -> dict[str, dict]:
    """One user lives on one partition, so the last record per user in partition order is the newest."""
    return {record["user_id"]: record for record in records}


@contextmanager
def running_worker(settings: Settings) -> Iterator[Worker]:
    """A real Worker on a thread; stopped (cleanly, as by SIGTERM) when the block ends."""
    worker = Worker(settings, CollectorRegistry())
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="worker-under-test", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop within 60s"
    if errors:
        raise errors[0]


def train_synthetic_model(world: SyntheticWorld, model_dir: Path, *, n_events: int = 20_000, epochs: int = 15) -> Path:
    """A real Mult-VAE trained on the world's events (item ids as the worker sees them)."""
    users, items, _ = world.sample(n_events, seed=99)
    X = sp.csr_matrix(([1.0] * n_events, (users, items)), shape=(world.n_users, world.n_items), dtype="float32")
    X.data[:] = 1.0
    model, _ = train_model("multvae", X, device="cpu", epochs=epochs, seed=0)
    return checkpoint.save(model, model_dir, item_ids=world.item_ids(), name="multvae")
