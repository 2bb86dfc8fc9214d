"""The one place Kafka clients are made: producers, consumers, readers and admin clients.

Every client starts from `Settings.kafka_common()` (bootstrap servers, the options file with the
auth settings, `STREAMREC_KAFKA_OPTIONS`), so a setting given once reaches every client of every
role. What differs per use is passed as overrides and says why beside it at the call site.

`ThrottledLog` is the one way a long-running loop reports a condition that may repeat every
poll (a broker away, a transaction not yet initialised): at most once a minute per kind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient

from stream_worker.config import Settings

Common = Settings | Mapping[str, Any]


def _common(settings: Common) -> dict[str, Any]:
    # Child processes of the bench get the plain dict (Settings holds callables-free data, but a
    # dict pickles without importing pydantic models again).
    return settings.kafka_common() if isinstance(settings, Settings) else dict(settings)


def producer_config(settings: Common) -> dict[str, Any]:
    """The settings of a producer whose records must arrive once and in order, however long the broker is away."""
    return {
        **_common(settings),
        "enable.idempotence": True,  # acks=all, no duplicates or reordering from retries
        # A flush produces its records in one burst, which batches by itself; waiting longer
        # for more would only add to every list's latency.
        "linger.ms": 1,
        "compression.type": "lz4",
        # Retry for as long as the broker is away: an outage of any length is waited out, and
        # the offsets behind unacknowledged records are simply not committed meanwhile.
        "message.timeout.ms": 0,
    }


def new_producer(settings: Common, **overrides: Any) -> Producer:
    """An idempotent producer (see `producer_config`) with `overrides` on top; an override of None
    removes that key, leaving librdkafka's default."""
    config = {**producer_config(settings), **overrides}
    return Producer({key: value for key, value in config.items() if value is not None})


def new_consumer(settings: Common, group_id: str, **overrides: Any) -> Consumer:
    """A consumer in `group_id` that never commits by itself (callers commit after their work is delivered)."""
    return Consumer({**_common(settings), "group.id": group_id, "enable.auto.commit": False, **overrides})


def new_reader(settings: Common, group_id: str, **overrides: Any) -> Consumer:
    """A consumer for assign() only: it reads partitions from chosen offsets and never commits.

    librdkafka requires a group id even for assign() and asks the group's coordinator, so the id
    is a fixed name under the workers' group (least-privilege ACLs can allow the prefix)."""
    return new_consumer(settings, group_id, **overrides)


def new_admin(settings: Common, **overrides: Any) -> AdminClient:
    return AdminClient({**_common(settings), **overrides})


class ThrottledLog:
    """Log a repeating condition at most once per `every_s` per kind (e.g. "client", "probe")."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self._log, self._every_s = logger, every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Log `message` unless `kind` was logged within `every_s` (then count it as held back);
        True when it was logged. The next line says how many were held back."""
        now = time.monotonic()
        if now - self._last.get(kind, -self._every_s) < self._every_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        self._log.warning(message + (f" ({held} similar since the last line)" if held else ""), *args)
        return True


def position(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a record that came from a poll (the client's types allow None)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None, "a consumed record has a position"
    return topic, partition, offset
