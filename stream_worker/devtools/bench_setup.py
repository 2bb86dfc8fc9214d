"""`streamrec bench`, its inputs: the configuration, synthetic events, topics, warm clients, the results."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Producer, TopicPartition

from stream_worker.codec import UserEvent
from stream_worker.config import Settings
from stream_worker.kafka.clients import new_admin, new_producer, new_reader

EVENT_TYPES = ("VIEW", "CLICK", "ADD_TO_CART", "PURCHASE")


@dataclass(frozen=True)
class BenchConfig:
    n_items: int = 3706  # MovieLens-1M's catalog
    n_users: int = 6040  # and its users
    recent_items: int = 100
    top_k: int = 20
    backlog_events: int = 150_000  # drained by the worker (several flushes); the stage limits use the same events
    naive_events: int = 6_000  # the naive consumer is slow: it takes the first ones only
    model_batch1_users: int = 1_000
    rates: tuple[float, ...] = (250.0, 500.0, 1000.0)
    seconds_per_rate: float = 20.0
    warmup_s: float = 3.0  # lists for events of the first seconds of each rate are not counted
    device: str = "cpu"
    partitions: int = 3
    seed: int = 0
    kind: str = "multvae"  # the model served (random initial weights: speed does not depend on them)
    # Rates run again with a CPU hog beside the worker (a process spinning on one core): the tail under load.
    loaded_rates: tuple[float, ...] = (1000.0,)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A smoke test of every phase in well under a minute (figures are not meaningful)."""
        small = dict(
            n_items=500, n_users=300, backlog_events=3_000, naive_events=200, model_batch1_users=100,
            rates=(200.0,), loaded_rates=(200.0,), seconds_per_rate=3.0, warmup_s=0.5,
        )  # fmt: skip
        return cls(**{**small, **overrides})


@dataclass
class Results:
    config: dict[str, Any]
    environment: dict[str, Any]
    stages: dict[str, float] = field(default_factory=dict)  # name -> per second
    naive_events_per_s: float = 0.0
    drain: dict[str, Any] = field(default_factory=dict)
    rates: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    state_bytes: dict[str, float] = field(default_factory=dict)  # per user held


def make_events(config: BenchConfig, n: int, seed: int, start_ms: int) -> list[UserEvent]:
    """n events: every user at least once (while n allows), then users uniform, items Zipf."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, config.n_users, n)
    users[: min(n, config.n_users)] = rng.permutation(config.n_users)[:n]
    items = (rng.zipf(1.3, n) - 1) % config.n_items
    kinds = rng.integers(0, len(EVENT_TYPES), n)
    return [
        UserEvent(f"b{seed}-{k}", f"u{users[k]:05d}", f"i{items[k]:05d}", EVENT_TYPES[kinds[k]], None, start_ms + k)
        for k in range(n)
    ]


def item_ids(config: BenchConfig) -> list[str]:
    return [f"i{i:05d}" for i in range(config.n_items)]


def create_topics(settings: Settings, names: list[str], partitions: int) -> None:
    from confluent_kafka.admin import NewTopic

    admin = new_admin(settings)  # held until the futures resolve
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions) for n in names])
    for future in futures.values():
        future.result(timeout=30)


def warm_producer(settings: Settings, topic: str) -> Producer:
    """An idempotent producer that already has its producer id and the topic's metadata."""
    producer = new_producer(settings)
    producer.produce(topic, b"warm-up", b"warm-up")
    assert producer.flush(60) == 0, f"could not produce to {topic} within 60 s"
    return producer


def produce_all(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> float:
    """Produce (key, value) pairs as fast as possible; returns records/s including the final flush."""
    producer = warm_producer(settings, f"{settings.recommendations_topic}.stage")
    started = time.perf_counter()
    for key, value in values:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0, "the broker did not acknowledge every record within 60 s"
    return len(values) / (time.perf_counter() - started)


def consume_all(settings: Settings, topic: str, n: int, max_records: int = 1000) -> tuple[float, list[Any]]:
    """Read n records from the beginning of `topic` with consume(max_records): (records/s, messages)."""
    consumer = new_reader(settings, f"bench-consume-{uuid.uuid4().hex[:8]}")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        msgs: list[Any] = []
        deadline = time.monotonic() + 120
        first = consumer.consume(1, timeout=30)  # connection and first fetch are not the stage's cost
        msgs.extend(m for m in first if not m.error())
        started = time.perf_counter()
        while len(msgs) < n and time.monotonic() < deadline:
            # Never ask for more than are left: consume() waits for all it asks for, or the timeout.
            wanted = min(max_records, n - len(msgs))
            msgs.extend(m for m in consumer.consume(wanted, timeout=0.5) if not m.error())
        elapsed = time.perf_counter() - started
        assert len(msgs) >= n, f"read {len(msgs)} of {n} records from {topic}"
        return (len(msgs) - len(first)) / elapsed, msgs
    finally:
        consumer.close()
