"""Publishing: recommendation records and dead letters onto their topics, with delivery tracking.

`wait_delivered` is the gate before every offset commit: it flushes the producer and fails
loudly if any record was not acknowledged, so an offset is never committed for work that
did not reach the broker (at-least-once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from confluent_kafka import KafkaError, Message, Producer

from stream_worker.codec import Codec
from stream_worker.inference import Ranked
from stream_worker.metrics import WorkerMetrics
from stream_worker.state import StateBatch

log = logging.getLogger(__name__)

# Headers of a dead letter; the original key, value and headers are kept as they were.
DLQ_REASON = "streamrec.error.reason"  # "decode" | "invalid"
DLQ_MESSAGE = "streamrec.error.message"
DLQ_TOPIC = "streamrec.source.topic"
DLQ_PARTITION = "streamrec.source.partition"
DLQ_OFFSET = "streamrec.source.offset"


class DeliveryError(Exception):
    """The broker did not acknowledge a record; nothing after it may be committed."""


def producer_config(common: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
    return {
        **common,
        "enable.idempotence": True,  # acks=all, no duplicates or reordering from retries
        "linger.ms": 5,
        "compression.type": "lz4",
    }


class Publisher:
    def __init__(
        self,
        producer: Producer,
        codec: Codec,
        *,
        recommendations_topic: str,
        dlq_topic: str,
        metrics: WorkerMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._producer = producer
        self._codec = codec
        self._recommendations_topic = recommendations_topic
        self._dlq_topic = dlq_topic
        self._metrics = metrics
        self._clock = clock
        self._failures: list[str] = []

    def recommendations(self, batch: StateBatch, ranked: Ranked, *, model_name: str, model_version: int) -> None:
        generated_at = int(self._clock() * 1000)
        for b, user_id in enumerate(batch.user_ids):
            value = self._codec.encode(
                {
                    "user_id": user_id,
                    "items": [
                        {"item_id": item, "score": score}
                        for item, score in zip(ranked.item_ids[b], ranked.scores[b], strict=True)
                    ],
                    "model_name": model_name,
                    "model_version": model_version,
                    "generated_at": generated_at,
                    "last_event_time": int(batch.last_event_ms[b]),
                    "last_event_id": batch.last_event_ids[b],
                    "events_reflected": int(batch.events_seen[b]),
                }
            )
            self._produce(
                self._recommendations_topic,
                user_id.encode(),
                value,
                on_acked=self._recommendation_acked(int(batch.last_event_ms[b])),
            )

    def dead_letter(self, msg: Message, reason: str, error: str) -> None:
        headers = [
            *list(msg.headers() or []),
            (DLQ_REASON, reason.encode()),
            (DLQ_MESSAGE, error.encode("utf-8", "replace")),
            (DLQ_TOPIC, (msg.topic() or "").encode()),
            (DLQ_PARTITION, str(msg.partition()).encode()),
            (DLQ_OFFSET, str(msg.offset()).encode()),
        ]
        log.warning("dead letter %s[%s]@%s (%s): %s", msg.topic(), msg.partition(), msg.offset(), reason, error)
        self._produce(self._dlq_topic, msg.key(), msg.value(), headers=headers, on_acked=self._dlq_acked(reason))

    def poll(self) -> None:
        """Serve delivery callbacks without waiting (call every loop turn)."""
        self._producer.poll(0)

    def wait_delivered(self, timeout_s: float = 60.0) -> None:
        """Block until every record produced so far is acknowledged, or raise DeliveryError."""
        remaining = self._producer.flush(timeout_s)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(
                f"{remaining} records unacknowledged after {timeout_s:.0f}s, "
                f"{len(failures)} failed: {'; '.join(failures[:3])}"
            )

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        on_acked: Callable[[KafkaError | None, Message], None],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=on_acked)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)

    # Delivery callbacks: one small partial per record (this runs for every recommendation).

    def _recommendation_acked(self, last_event_ms: int) -> Callable[[KafkaError | None, Message], None]:
        return partial(self._on_recommendation_delivery, last_event_ms)

    def _on_recommendation_delivery(self, last_event_ms: int, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")
            return
        self._metrics.recommendations.inc()
        self._metrics.event_to_recommendation.observe(max(self._clock() - last_event_ms / 1000, 0.0))

    def _dlq_acked(self, reason: str) -> Callable[[KafkaError | None, Message], None]:
        return partial(self._on_dead_letter_delivery, reason)

    def _on_dead_letter_delivery(self, reason: str, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")
            return
        self._metrics.dead_letters.labels(reason).inc()
