"""Step 1 of a round: the window of the event log as NumPy columns.

The events whose Kafka timestamps fall in the last `trainer_window_s`, up to the end offsets seen
when the round starts (so a round always finishes), one consumed chunk at a time: ids are interned
to int32 codes per chunk, and no Python object per event outlives its chunk (`WindowBuilder`).
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass

import numpy as np
from confluent_kafka import TopicPartition

from stream_worker.codec import USER_EVENT, DecodeError, InvalidEvent, make_codec, to_user_event
from stream_worker.config import Settings
from stream_worker.kafka.clients import new_reader, position
from stream_worker.model_input import interaction_weight


@dataclass
class EventWindow:
    """Events of one training window as parallel columns, in the order they were read
    (which keeps each user's events in arrival order: one user lives on one partition).
    User and item codes follow the sorted ids, so a window's arrays do not depend on the order
    in which its partitions were read."""

    users: np.ndarray  # (n,) int32 codes into user_ids
    items: np.ndarray  # (n,) int32 codes into item_ids
    weights: np.ndarray  # (n,) float32, `interaction_weight` of each event
    times_ms: np.ndarray  # (n,) int64 event time
    user_ids: list[str]
    item_ids: list[str]
    skipped: int  # records that did not decode or validate (the worker dead-letters them)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def start_ms(self) -> int:
        return int(self.times_ms.min()) if len(self) else 0

    @property
    def end_ms(self) -> int:
        return int(self.times_ms.max()) if len(self) else 0


class WindowBuilder:
    """Appends chunks of events to compact columns (20 bytes an event), interning ids per chunk.

    `array.array` grows in place without a Python object per element, so the window's memory
    is its columns plus the two id dictionaries (one entry per distinct user and item).
    """

    def __init__(self) -> None:
        self._user_code: dict[str, int] = {}
        self._item_code: dict[str, int] = {}
        self._users, self._items = array("i"), array("i")
        self._weights, self._times = array("f"), array("q")
        self._forgotten: dict[str, int] = {}  # user id -> events read before their deletion request
        self.skipped = 0

    def add_chunk(self, users: list[str], items: list[str], weights: list[float], times_ms: list[int]) -> None:
        # dict.setdefault(key, len(dict)) gives a new id the next code: len is taken before insertion.
        self._users.extend(self._user_code.setdefault(u, len(self._user_code)) for u in users)
        self._items.extend(self._item_code.setdefault(i, len(self._item_code)) for i in items)
        self._weights.extend(weights)
        self._times.extend(times_ms)

    def forget(self, user_id: str) -> None:
        """A deletion request (tombstone): none of the user's events read so far is trained on."""
        self._forgotten[user_id] = len(self._users)

    def __len__(self) -> int:
        return len(self._users)

    def build(self) -> EventWindow:
        users = np.frombuffer(self._users, np.int32)
        keep: slice | np.ndarray = slice(None)
        if self._forgotten:  # (B,) an event survives only if it came after its user's last deletion request
            cut = np.zeros(len(self._user_code), np.int64)
            for user_id, read_before in self._forgotten.items():
                if user_id in self._user_code:
                    cut[self._user_code[user_id]] = read_before
            keep = np.arange(len(users)) >= cut[users]
        # Codes in sorted id order, not first-read order: partitions interleave differently from one
        # read to the next, and the same window must give the same rows, columns and so the same model.
        user_ids, user_rank = _sorted_codes(self._user_code)
        item_ids, item_rank = _sorted_codes(self._item_code)
        return EventWindow(
            users=user_rank[users[keep]],
            items=item_rank[np.frombuffer(self._items, np.int32)[keep]],
            weights=np.frombuffer(self._weights, np.float32)[keep],
            times_ms=np.frombuffer(self._times, np.int64)[keep],
            user_ids=user_ids,
            item_ids=item_ids,
            skipped=self.skipped,
        )


def _sorted_codes(codes: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """(ids in sorted order, rank): `rank[code]` is the code's position among the sorted ids."""
    ids = sorted(codes)
    rank = np.empty(len(ids), np.int32)
    rank[[codes[i] for i in ids]] = np.arange(len(ids), dtype=np.int32)
    return ids, rank


def read_window(settings: Settings, *, since_ms: int, timeout_s: float = 600.0) -> EventWindow:
    """Every event on the events topic with a Kafka timestamp >= since_ms, up to the current end."""
    topic = settings.events_topic
    codec = make_codec(USER_EVENT, topic, settings.schema_registry_url)
    consumer = new_reader(settings, f"{settings.group_id}.trainer")
    window = WindowBuilder()
    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in partitions], timeout=10)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        # offset -1 = no record at or after since_ms in that partition: nothing to read there.
        todo = {tp.partition: tp.offset for tp in starts if 0 <= tp.offset < ends[tp.partition]}
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in todo.items()])

        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            users: list[str] = []
            items: list[str] = []
            weights: list[float] = []
            times: list[int] = []
            for msg in consumer.consume(1000, timeout=1.0):  # one chunk: at most 1000 events
                if msg.error():
                    continue
                _, partition, offset = position(msg)
                if offset + 1 >= ends[partition]:
                    todo.pop(partition, None)
                if msg.value() is None and msg.key():  # "forget this user": drop what came before
                    window.add_chunk(users, items, weights, times)
                    users, items, weights, times = [], [], [], []
                    window.forget((msg.key() or b"").decode("utf-8", "replace"))
                    continue
                try:
                    event = to_user_event(codec.decode(msg.value() or b""), msg.key())
                except (DecodeError, InvalidEvent):
                    window.skipped += 1
                    continue
                users.append(event.user_id)
                items.append(event.item_id)
                weights.append(interaction_weight(settings.event_weights, event.event_type, event.value))
                times.append(event.event_time_ms)
            window.add_chunk(users, items, weights, times)
        if todo:
            raise TimeoutError(f"reading the training window did not reach the end offsets within {timeout_s}s")
    finally:
        consumer.close()
    return window.build()
