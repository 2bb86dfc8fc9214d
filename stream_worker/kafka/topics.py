"""The topics: creating them (idempotently), and how far the worker group has read."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream_worker.config import Settings
from stream_worker.kafka.clients import new_admin, new_consumer

# The checkpoints topic (channel/checkpoint_topic.py): compacted, partition 0 the manifests, 1 the chunks.
CHECKPOINTS_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": str(64 * 1024 * 1024)}


def checkpoints_topic_spec(settings: Settings) -> NewTopic:
    """The checkpoints topic as `topics create` makes it: compacted, one manifests and one chunks partition."""
    return NewTopic(
        settings.checkpoints_topic, num_partitions=2, replication_factor=-1, config=dict(CHECKPOINTS_TOPIC_CONFIG)
    )


def topic_specs(settings: Settings, partitions: int | None = None) -> list[NewTopic]:
    """The topics streamrec uses. Events, recommendations and dead letters are partitioned by
    user (key = user id); recommendations are compacted (the newest list per user is what
    counts); model updates are a low-volume log on one partition, read newest first."""
    n = partitions or settings.topic_partitions
    return [
        NewTopic(settings.events_topic, num_partitions=n, replication_factor=-1),
        NewTopic(
            settings.recommendations_topic,
            num_partitions=n,
            replication_factor=-1,
            config={"cleanup.policy": "compact"},
        ),
        NewTopic(settings.dlq_topic, num_partitions=n, replication_factor=-1),
        # Co-partitioned with the events: a worker restores partition p of it for events partition p.
        NewTopic(settings.state_topic, num_partitions=n, replication_factor=-1, config={"cleanup.policy": "compact"}),
        NewTopic(settings.model_updates_topic, num_partitions=1, replication_factor=-1),
        checkpoints_topic_spec(settings),  # compacted; its records: channel/checkpoint_topic.py
    ]


def ensure_topics(settings: Settings, partitions: int | None = None, timeout_s: float = 30) -> dict[str, str]:
    """Create missing topics; returns {topic: "created" | "exists"}. Existing topics are left as they are."""
    admin = new_admin(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    specs = topic_specs(settings, partitions)
    if settings.events_topic in existing:  # the state topic must match the events topic, whatever was asked
        events_partitions = len(existing[settings.events_topic].partitions)
        specs = [
            NewTopic(s.topic, events_partitions, replication_factor=-1, config=s.config)
            if s.topic == settings.state_topic
            else s
            for s in specs
        ]
    futures = admin.create_topics(specs, operation_timeout=timeout_s)
    outcome = {}
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            outcome[topic] = "created"
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            outcome[topic] = "exists"
    _wait_for_leaders(admin, [t for t, o in outcome.items() if o == "created"], timeout_s)
    return outcome


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    """Return once every partition of `topics` has a leader, so the first client to use a topic
    just created does not meet NOT_LEADER_FOR_PARTITION; raise KafkaException after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    waiting = set(topics)
    while waiting:
        metadata = admin.list_topics(timeout=max(deadline - time.monotonic(), 1.0)).topics
        waiting = {
            t
            for t in waiting
            if t not in metadata
            or metadata[t].error is not None
            or not metadata[t].partitions
            or any(p.leader < 0 or p.error is not None for p in metadata[t].partitions.values())
        }
        if waiting and time.monotonic() > deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no leader elected for {sorted(waiting)}"))
        if waiting:
            time.sleep(0.1)  # a backoff between metadata requests


def committed_and_end_offsets(settings: Settings, timeout_s: float = 10) -> tuple[dict[int, int], dict[int, int]]:
    """The worker group's committed offsets on the events topic (-1001 = none yet), and the
    topic's end offsets, by partition: the group has caught up when the two are equal."""
    topic = settings.events_topic
    consumer = new_consumer(
        settings,
        settings.group_id,
        **{
            # read_committed would wait for stable offsets, and under exactly-once a transaction is
            # nearly always open: read the newest commit instead (a progress view, not a guarantee).
            "isolation.level": "read_uncommitted",
        },
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        ]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=timeout_s)}
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=timeout_s)[1] for tp in partitions}
        return committed, ends
    finally:
        consumer.close()
