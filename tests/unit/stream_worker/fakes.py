"""Test doubles for confluent-kafka's Producer and Consumer: deliveries and commits under the
test's control, so the order of acknowledgements and commits can be checked exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition


@dataclass
class Produced:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]] | None
    on_delivery: Any
    done: bool = False


class FakeProducer:
    """Holds every delivery report until `ack()`; `auto_ack` acknowledges on the next poll/flush."""

    def __init__(self, max_bytes: int = 1_000_000) -> None:
        self.records: list[Produced] = []
        self.max_bytes = max_bytes
        self.auto_ack = False
        self.log: list[tuple[str, Any]] = []  # shared with a FakeConsumer to check the order of events

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, partition=-1) -> None:
        if len(value or b"") + len(key or b"") > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.records.append(Produced(topic, value, key, headers, on_delivery))
        self.log.append(("produce", topic))

    def ack(self, error: KafkaError | None = None, *, only: int | None = None, topic: str | None = None) -> int:
        """Deliver the pending reports (the first `only` of them, of `topic` if given), successfully or with `error`."""
        pending = [r for r in self.records if not r.done and topic in (None, r.topic)][:only]
        for record in pending:
            record.done = True
            self.log.append(("ack" if error is None else "refused", record.topic))
            record.on_delivery(error, None)
        return len(pending)

    def poll(self, _timeout: float = 0) -> int:
        return self.ack() if self.auto_ack else 0

    def flush(self, _timeout: float = 0) -> int:
        self.poll()
        return sum(not r.done for r in self.records)

    def __len__(self) -> int:
        return sum(not r.done for r in self.records)


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list = field(default_factory=list)

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return self._key

    def value(self):
        return self._value

    def headers(self):
        return self._headers

    def error(self):
        return None


class FakeConsumer:
    """Hands out queued messages; records commits (in the producer's log, to check their order)."""

    def __init__(self, log: list) -> None:
        self.queue: list[FakeMessage] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.log = log

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[FakeMessage]:
        taken, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return taken

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        committed = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        self.commits.append(committed)
        self.log.append(("commit", committed))

    def close(self) -> None:
        pass

    def committed_offset(self, topic: str, partition: int) -> int | None:
        for commit in reversed(self.commits):
            if (topic, partition) in commit:
                return commit[(topic, partition)]
        return None
