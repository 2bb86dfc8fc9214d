"""Reading the recommendations topic back, for people (`streamrec tail`) and the demo."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from stream_worker.codec import RECOMMENDATION, DecodeError, make_codec
from stream_worker.config import Settings


def follow(
    settings: Settings,
    *,
    from_beginning: bool = False,
    idle_timeout_s: float | None = None,
    stop: threading.Event | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Decoded recommendation records, as they arrive on every partition (no group, no commits)."""
    topic = settings.recommendations_topic
    codec = make_codec(RECOMMENDATION, topic, settings.schema_registry_url)
    consumer = Consumer(
        {**settings.kafka_common(), "group.id": f"streamrec-tail-{uuid.uuid4()}", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        seen, last_record = 0, time.monotonic()
        while not (stop and stop.is_set()) and (limit is None or seen < limit):
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                if idle_timeout_s is not None and time.monotonic() - last_record > idle_timeout_s:
                    return
                continue
            last_record = time.monotonic()
            try:
                yield codec.decode(msg.value() or b"")
            except DecodeError as exc:
                yield {"user_id": (msg.key() or b"").decode(errors="replace"), "error": str(exc)}
            seen += 1
    finally:
        consumer.close()


def format_recommendation(record: dict[str, Any], n_items: int = 5) -> str:
    if "error" in record:
        return f"{record['user_id']:>12}  undecodable: {record['error']}"
    latency_ms = record["generated_at"] - record["last_event_time"]
    shown = ", ".join(f"{item['item_id']} ({item['score']:.2f})" for item in record["items"][:n_items])
    more = len(record["items"]) - n_items
    return (
        f"{record['user_id']:>12}  {record['model_name']} v{record['model_version']}  "
        f"{record['events_reflected']:>4} events  +{latency_ms}ms  {shown}{f' +{more} more' if more > 0 else ''}"
    )
