"""Publishing user events onto the events topic: from a MovieLens ratings file or the
synthetic world, at a bounded rate. Used by `streamrec replay`, the demo and the tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError, Message, Producer

from stream_worker.codec import USER_EVENT, UserEvent, from_user_event, make_codec
from stream_worker.config import Settings
from stream_worker.kafka.clients import new_producer


class PublishError(RuntimeError):
    """Some events were not acknowledged by the broker; the message says how many and why."""

    exit_code = 1  # the command line exits with it: a runtime error


def publish_events(
    settings: Settings,
    events: Iterable[UserEvent],
    *,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    producer: Producer | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Produce `events` (key = user id) at most `rate` per second; returns how many were acknowledged.

    When `stop` is set, no further event is produced; those already queued are flushed and
    counted, and the count is returned without raising. Otherwise raises PublishError if any
    event was not acknowledged by the broker.
    """
    codec = make_codec(USER_EVENT, settings.events_topic, settings.schema_registry_url)
    producer = producer or new_producer(settings, **{"linger.ms": 20})
    failures: list[str] = []
    acknowledged = [0]

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))
        else:
            acknowledged[0] += 1

    started = time.monotonic()
    sent = 0
    for event in events:
        if stop is not None and stop.is_set():
            break
        if rate:
            # Pace to the rate: event n leaves no earlier than n / rate seconds after the start
            # (waiting in slices of at most 0.5 s, so that `stop` is seen promptly).
            while (ahead := sent / rate - (time.monotonic() - started)) > 0:
                producer.poll(min(ahead, 0.5))
                if stop is not None and stop.is_set():
                    break
            if stop is not None and stop.is_set():
                break
        value = codec.encode(from_user_event(event))
        while True:
            try:
                producer.produce(settings.events_topic, value, event.user_id.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        sent += 1
        if on_progress and sent % 1000 == 0:
            on_progress(sent)
    remaining = producer.flush(60)
    if (remaining or failures) and not (stop is not None and stop.is_set()):
        reason = f": {failures[0]}" if failures else " within 60 s"
        raise PublishError(
            f"{remaining + len(failures)} of {sent} events were not acknowledged by Kafka at "
            f"{settings.bootstrap_servers}{reason} — check the broker's health and the topic {settings.events_topic!r}"
        )
    if on_progress:
        on_progress(sent)
    return acknowledged[0]


def retimed(events: Iterable[UserEvent], now_ms: Callable[[], int]) -> Iterator[UserEvent]:
    """The same events stamped with the time they are sent (so latency figures mean something)."""
    for event in events:
        yield UserEvent(
            event_id=event.event_id,
            user_id=event.user_id,
            item_id=event.item_id,
            event_type=event.event_type,
            value=event.value,
            event_time_ms=now_ms(),
            context=event.context,
        )


def ratings_events(path: Path, limit: int | None = None) -> Iterator[UserEvent]:
    """A MovieLens ratings file as RATING events, oldest first (ids are the file's, as strings)."""
    from models.data import iter_rating_rows

    rows = np.concatenate(list(iter_rating_rows(path)))  # (n, 4): user, item, rating, timestamp
    rows = rows[rows[:, 3].argsort(kind="stable")][:limit]
    for n, (user, item, rating, timestamp) in enumerate(rows.tolist()):
        yield UserEvent(
            event_id=f"{path.name}-{n}",
            user_id=str(int(user)),
            item_id=str(int(item)),
            event_type="RATING",
            value=rating,
            event_time_ms=int(timestamp) * 1000,
        )


def publish_forget(settings: Settings, user_id: str, timeout_s: float = 30.0) -> None:
    """A deletion request: a tombstone (null value) keyed by the user id on the events topic.

    It must land on the partition the user's events use, so it is produced with the same
    partitioner as the events (librdkafka's default; set `partitioner` in STREAMREC_KAFKA_OPTIONS
    to match other producers, e.g. murmur2_random for Java's)."""
    producer = new_producer(settings)
    errors: list[KafkaError | None] = []
    producer.produce(settings.events_topic, None, user_id.encode(), on_delivery=lambda err, _m: errors.append(err))
    producer.flush(timeout_s)
    if errors != [None]:
        raise RuntimeError(f"the deletion request for {user_id!r} was not acknowledged: {errors or 'no answer'}")
