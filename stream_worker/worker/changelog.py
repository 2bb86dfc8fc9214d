"""The state changelog: each user's state as a record on the compacted `user-state` topic, and
restoring a worker's partitions from it.

After every flush the worker writes the state of each user it scored (`encode`), to the same
partition number of `user-state` that the user's events came from, so a worker that is assigned
events partition p restores exactly `user-state` partition p (`restore`) before it processes any
event of p. Each record carries the source offset it reflects; events at or below it are
skipped on replay (`UserState.apply`), which makes restored state equal to state that never
stopped. Values are Avro (`schemas/user_state.avsc`) in the same single-object encoding as every
other topic: compact, versioned by schema fingerprint, never pickled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from stream_worker.codec import SINGLE_OBJECT_MAGIC, SingleObjectCodec
from stream_worker.codec import avro_long as _long
from stream_worker.codec import avro_string as _string
from stream_worker.config import Settings
from stream_worker.kafka.clients import new_reader
from stream_worker.worker.state import ItemCodes, UserSnapshot, UserState

log = logging.getLogger(__name__)

USER_STATE = "user_state"
_CODEC = SingleObjectCodec(USER_STATE)


def encode(snap: UserSnapshot, source_topic: str) -> bytes:
    return _CODEC.encode(
        {
            "user_id": snap.user_id,
            "source_topic": source_topic,
            "source_partition": snap.partition,
            "source_offset": snap.offset,
            "events_seen": snap.events_seen,
            "last_event_time": snap.last_event_ms,
            "last_event_id": snap.last_event_id,
            "item_ids": snap.item_ids,
            "weights": snap.weights.astype("<f4").tobytes(),
            "event_times": snap.times_ms.astype("<i8").tobytes(),
        }
    )


class ChangelogEncoder:
    """The changelog records of many users at once, straight from the state's arrays.

    The bytes are exactly what `encode(state.snapshot(user), source_topic)` writes (a unit test
    compares them). Why by hand: `snapshot` builds a list of item id strings per user and
    fastavro's writer walks a dict per record, together about as costly per user as a quarter
    of the model call when draining; here each item id is encoded once (cached per item code)
    and a record is a join of ready-made pieces, as in `worker.encoders`.
    """

    def __init__(self, source_topic: str) -> None:
        self._header = SINGLE_OBJECT_MAGIC + _CODEC.fingerprint.to_bytes(8, "little")
        self._topic = _string(source_topic)
        self._ids: list[bytes] = []  # Avro string of each item code's id
        self._generation = -1

    def encode(self, state: UserState, user_ids: list[str]) -> list[tuple[int, bytes]]:
        """(events partition, record value) per user, in order."""
        rows = state.snapshot_rows(user_ids)
        ids = self._item_ids(state.items)
        empty = b"\x00"  # the Avro string "" of an interaction kept without its item
        out = []
        for b, (user_id, partition, offset, seen, last_ms, last_id, held) in enumerate(
            zip(
                rows.user_ids,
                rows.partition.tolist(),
                rows.offset.tolist(),
                rows.events_seen.tolist(),
                rows.last_event_ms.tolist(),
                rows.last_event_ids,
                rows.held.tolist(),
                strict=True,
            )
        ):
            codes = rows.item_codes[b, :held].tolist()
            items = _long(held) + b"".join([ids[c] if c >= 0 else empty for c in codes]) + b"\x00" if held else b"\x00"
            weights = rows.weights[b, :held].astype("<f4").tobytes()
            times = (rows.times_s[b, :held].astype("<i8") * 1000).tobytes()
            value = b"".join(
                (
                    self._header,
                    _string(user_id),
                    self._topic,
                    _long(partition),
                    _long(offset),
                    _long(seen),
                    _long(last_ms),
                    _string(last_id),
                    items,
                    _long(len(weights)),
                    weights,
                    _long(len(times)),
                    times,
                )
            )
            out.append((partition, value))
        return out

    def _item_ids(self, items: ItemCodes) -> list[bytes]:
        if items.generation != self._generation:  # the item table was compacted: codes changed
            self._ids, self._generation = [], items.generation
        self._ids.extend(_string(item_id) for item_id in items.ids[len(self._ids) :])
        return self._ids


def decode(value: bytes) -> tuple[str, UserSnapshot]:
    """(source topic, snapshot)"""
    record = _CODEC.decode(value)
    return record["source_topic"], UserSnapshot(
        user_id=record["user_id"],
        partition=record["source_partition"],
        offset=record["source_offset"],
        events_seen=record["events_seen"],
        last_event_ms=record["last_event_time"],
        last_event_id=record["last_event_id"],
        item_ids=record["item_ids"],
        weights=np.frombuffer(record["weights"], "<f4").astype(np.float32),
        times_ms=np.frombuffer(record["event_times"], "<i8").astype(np.int64),
    )


@dataclass
class Restored:
    users: int  # users put back into state
    records: int  # changelog records read (older versions and tombstones included)
    seconds: float


def restore(settings: Settings, partitions: Iterable[int], state: UserState, *, timeout_s: float) -> Restored:
    """Read `user-state` partitions from the beginning to their end and put their users into `state`.

    Per user the record with the highest source offset wins (a zombie worker's late write cannot
    take a user back in time); a tombstone forgets the user. In exactly-once mode only committed
    transactions are read. Raises TimeoutError if the end is not reached within `timeout_s`.
    """
    started = time.perf_counter()
    topic = settings.state_topic
    todo = set(partitions)
    if not todo:
        return Restored(0, 0, 0.0)
    consumer = new_reader(
        settings,
        f"{settings.group_id}.restore",
        **{"enable.partition.eof": True, "isolation.level": "read_committed"},  # eof: a partition read to its end
    )
    newest: dict[str, UserSnapshot | None] = {}
    records = foreign = 0
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"restoring {topic} partitions {sorted(todo)} did not reach their end within {timeout_s:.0f}s"
                )
            for msg in consumer.consume(10_000, timeout=0.5):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        todo.discard(msg.partition())
                    elif error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        log.warning("restoring %s: %s", topic, error)
                    continue
                records += 1
                user_id = (msg.key() or b"").decode()
                if msg.value() is None:
                    newest[user_id] = None
                    continue
                source, snap = decode(msg.value() or b"")
                if (
                    source != settings.events_topic
                ):  # state built from another events topic: its offsets mean nothing here
                    foreign += 1
                    continue
                held = newest.get(user_id)
                if held is None or snap.offset >= held.offset or snap.partition != held.partition:
                    newest[user_id] = snap
    finally:
        consumer.close()
    if foreign:
        log.warning(
            "ignored %d records of %s built from another events topic than %s", foreign, topic, settings.events_topic
        )
    users = 0
    for user_id, kept in newest.items():
        if kept is None:
            state.forget(user_id)
        else:
            state.restore(kept)
            users += 1
    return Restored(users, records, time.perf_counter() - started)
