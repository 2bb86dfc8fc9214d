"""Creating the four topics (idempotently) with the admin client."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream_worker.config import Settings


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
        NewTopic(settings.model_updates_topic, num_partitions=1, replication_factor=-1),
    ]


def ensure_topics(settings: Settings, partitions: int | None = None, timeout_s: float = 30) -> dict[str, str]:
    """Create missing topics; returns {topic: "created" | "exists"}. Existing topics are left as they are."""
    admin = AdminClient(settings.kafka_common())
    futures = admin.create_topics(topic_specs(settings, partitions), operation_timeout=timeout_s)
    outcome = {}
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            outcome[topic] = "created"
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            outcome[topic] = "exists"
    return outcome
