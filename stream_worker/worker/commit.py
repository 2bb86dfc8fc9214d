"""The two delivery guarantees, one class each: when consumed offsets become committed.

Both follow the same rule: an offset is committed only once everything produced for the events
before it (lists, dead letters, state changelog) is acknowledged by the broker. The worker's loop
calls the same four methods whatever the guarantee:

    due()          each turn, after serving acknowledgements: commit what is ready; False = the
                   previous flush is not committed yet, take nothing new (exactly-once only)
    flushed()      after a flush was sealed with its offsets
    finish(t)      at a clean stop or a revocation: wait up to t seconds, commit, say if all got through
    forget(keys)   partitions left this worker: never commit their offsets from here

`AtLeastOnce` commits the offsets of acknowledged flushes asynchronously, at most every
`commit_interval_ms`; a crash replays from the last commit (duplicates, never loss).
`Transactional` puts each flush's records and its offsets into one Kafka transaction
(KIP-98/447), as in confluent-kafka-python's `eos_transactions.py`: lists, state and offsets
become visible together or not at all; an abort rewinds the worker to the committed offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from stream_worker.kafka.clients import ThrottledLog
from stream_worker.worker.publish import Publisher

log = logging.getLogger(__name__)

TopicKey = tuple[str, int]


class CommitStrategy(Protocol):
    def due(self) -> bool: ...
    def flushed(self) -> None: ...
    def finish(self, timeout_s: float) -> bool: ...
    def forget(self, keys: set[TopicKey]) -> None: ...
    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None: ...


class AtLeastOnce:
    def __init__(self, consumer: Consumer, publisher: Publisher, commit_interval_s: float) -> None:
        self._consumer, self._publisher, self.interval_s = consumer, publisher, commit_interval_s
        # Acknowledged and not yet known to be committed (a failed commit is repeated).
        self.acked: dict[TopicKey, int] = {}
        self._last_commit = 0.0
        self._waiting = False  # offsets newly acknowledged since the last commit request
        self._throttled = ThrottledLog(log)

    def due(self) -> bool:
        """Commit the offsets of flushes the broker has fully acknowledged (asynchronously, at most
        every commit_interval_s; a failed commit is repeated at least once a second)."""
        newly = self._publisher.committable()
        self.acked.update(newly)
        self._waiting |= bool(newly)
        interval = self.interval_s if self._waiting else 1.0
        if self.acked and time.monotonic() - self._last_commit >= interval:
            self._last_commit = time.monotonic()
            self._waiting = False
            try:
                self._consumer.commit(offsets=_partitions(self.acked), asynchronous=True)
            except KafkaException as exc:
                self._throttled.warning("commit", "offset commit failed, will retry: %s", exc)
        return True

    def flushed(self) -> None:
        pass  # committed by due() once acknowledged

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's commit callback: offsets the broker confirmed need no further commit."""
        if err is not None:
            self._throttled.warning("commit", "offset commit failed, will retry: %s", err)
            return
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if self.acked.get(key) == tp.offset:
                del self.acked[key]

    def finish(self, timeout_s: float) -> bool:
        """Wait for every acknowledgement, then commit synchronously. False if something stayed
        unacknowledged (its offsets are not committed)."""
        done = self._publisher.wait_all(timeout_s)
        self.acked.update(self._publisher.committable())
        if self.acked:
            try:
                self._consumer.commit(offsets=_partitions(self.acked), asynchronous=False)
                self.acked.clear()
            except KafkaException as exc:
                # The work is published; a lost commit only means replay (at-least-once).
                log.warning("offset commit failed: %s; those events may be replayed", exc)
        return done

    def forget(self, keys: set[TopicKey]) -> None:
        for key in keys:
            self.acked.pop(key, None)


class Transactional:
    """One transaction per flush. The cycle, in order:

    Step 1. begin     before the first record of the flush is produced (`begin`, the publisher's hook)
    Step 2. produce   lists, dead letters and changelog records of the flush
    Step 3. offsets   send the flush's consumed offsets into the transaction
    Step 4. commit    the broker makes records and offsets visible at once

    A flush waits for its commit before the worker takes new records, so at most one transaction
    is open. An abort (`txn_requires_abort`) calls `rewind`: none of it happened."""

    def __init__(
        self, producer: Producer, consumer: Consumer, publisher: Publisher, rewind: Callable[[str], None]
    ) -> None:
        self._producer, self._consumer, self._publisher, self._rewind = producer, consumer, publisher, rewind
        self._open = False
        self._offsets_sent = False
        self._due = False  # a sealed flush waits for its transaction to commit

    def begin(self) -> None:
        """Step 1, called by the publisher before it produces anything."""
        if not self._open:
            self._producer.begin_transaction()
            self._open = True

    def due(self) -> bool:
        return not self._due or self._commit(timeout_s=1.0)

    def flushed(self) -> None:
        self._due = True
        self._commit(timeout_s=1.0)

    def finish(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._due and time.monotonic() < deadline:
            self._commit(timeout_s=1.0)
        return not self._due

    def forget(self, keys: set[TopicKey]) -> None:
        pass  # the publisher drops them from its sealed flushes; nothing is held here

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        pass  # offsets are committed inside the transaction, not by the consumer

    def _commit(self, timeout_s: float) -> bool:
        """Steps 3 and 4. True once committed; False when the broker did not answer in time (call
        again: nothing is lost); an abort rewinds and counts as done."""
        offsets = self._publisher.sealed_offsets()
        self.begin()  # a flush with no records still commits its offsets (e.g. all events were replays)
        try:
            if offsets and not self._offsets_sent:
                group = self._consumer.consumer_group_metadata()
                self._producer.send_offsets_to_transaction(_partitions(offsets), group, timeout_s)
                self._offsets_sent = True
            self._producer.commit_transaction(timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                self._producer.abort_transaction(max(timeout_s, 30))
                self._publisher.reset()
                self._open = self._offsets_sent = self._due = False
                self._rewind(f"transaction aborted: {error.str()}")
                return True
            if error.retriable():
                return False
            raise
        self._open = self._offsets_sent = self._due = False
        self._publisher.committed()
        return True


def make_strategy(
    exactly_once: bool,
    *,
    producer: Producer,
    consumer: Consumer,
    publisher: Publisher,
    commit_interval_s: float,
    rewind: Callable[[str], None],
) -> AtLeastOnce | Transactional:
    if not exactly_once:
        return AtLeastOnce(consumer, publisher, commit_interval_s)
    strategy = Transactional(producer, consumer, publisher, rewind)
    publisher.before_produce = strategy.begin
    return strategy


def _partitions(offsets: dict[TopicKey, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
