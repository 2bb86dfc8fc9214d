"""Rolling per-user interaction state, held in compact NumPy arrays.

Each user owns one row ("slot") of fixed-width ring buffers holding their most recent
`recent_items` interactions: item code, weight, event time. No Python object is made per
interaction; the only per-user objects are the user id (dict key) and their last event id.
Memory is bounded: the arrays grow by doubling up to `max_users` rows, after which the
least recently active user is evicted.

Item ids are interned to int32 codes here, independently of any model's vocabulary, so
events for items a model does not know are kept and simply ignored at scoring time (the
next model may know them).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from stream_worker.codec import UserEvent
from stream_worker.model_input import decayed

_INITIAL_ROWS = 1024


def interaction_weight(event_weights: dict[str, float], event_type: str, value: float | None) -> float:
    """Weight of one interaction: its type's weight, scaled by rating / 5 for ratings.

    Shared by the worker's state and the trainer's interaction matrix, so the model is
    trained on the same signal it is served.
    """
    weight = event_weights.get(event_type, event_weights["OTHER"])
    if event_type == "RATING" and value is not None:
        weight *= value / 5.0
    return weight


class ItemCodes:
    """Interns item ids to dense int32 codes (0, 1, 2, ...) in order of first sight."""

    def __init__(self) -> None:
        self.code_of: dict[str, int] = {}
        self.ids: list[str] = []

    def code(self, item_id: str) -> int:
        code = self.code_of.get(item_id)
        if code is None:
            code = self.code_of[item_id] = len(self.ids)
            self.ids.append(item_id)
        return code

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class StateBatch:
    """The state of B users, ready for scoring: decayed weights of their recent items."""

    user_ids: list[str]
    item_codes: np.ndarray  # (B, L) int32, -1 = empty slot
    weights: np.ndarray  # (B, L) float32, time-decayed; 0 where empty
    events_seen: np.ndarray  # (B,) int64
    last_event_ms: np.ndarray  # (B,) int64
    last_event_ids: list[str]


class UserState:
    def __init__(
        self,
        *,
        max_users: int,
        recent_items: int,
        event_weights: dict[str, float],
        decay_half_life_s: float,
    ) -> None:
        self.max_users = max_users
        self.recent_items = recent_items
        self.event_weights = event_weights
        # Weight multiplier per millisecond of age is 2^(-age / half_life); 0 disables decay.
        self._decay_per_ms = math.log(2) / (decay_half_life_s * 1000) if decay_half_life_s > 0 else 0.0
        self.items = ItemCodes()

        rows = min(_INITIAL_ROWS, max_users)
        self._item_codes = np.full((rows, recent_items), -1, np.int32)
        self._weights = np.zeros((rows, recent_items), np.float32)
        self._times = np.zeros((rows, recent_items), np.int64)
        self._events_seen = np.zeros(rows, np.int64)  # also the ring position: events_seen % L
        self._last_event_ms = np.zeros(rows, np.int64)
        self._partition = np.full(rows, -1, np.int32)
        self._last_event_id: list[str] = [""] * rows

        # user id -> slot, least recently active first (move_to_end on every event).
        self._slots: OrderedDict[str, int] = OrderedDict()
        self._free: list[int] = list(range(rows - 1, -1, -1))
        self.evicted_total = 0

    def __len__(self) -> int:
        return len(self._slots)

    def apply(self, events: Iterable[tuple[UserEvent, int]]) -> set[str]:
        """Add (event, partition) pairs to their users' state; returns the users that changed."""
        changed: set[str] = set()
        for event, partition in events:
            slot = self._slot_for(event.user_id)
            n = self._events_seen[slot]
            pos = n % self.recent_items
            self._item_codes[slot, pos] = self.items.code(event.item_id)
            self._weights[slot, pos] = interaction_weight(self.event_weights, event.event_type, event.value)
            self._times[slot, pos] = event.event_time_ms
            self._events_seen[slot] = n + 1
            if event.event_time_ms >= self._last_event_ms[slot]:
                self._last_event_ms[slot] = event.event_time_ms
                self._last_event_id[slot] = event.event_id
            self._partition[slot] = partition
            changed.add(event.user_id)
        return changed

    def batch(self, user_ids: list[str]) -> StateBatch:
        """Snapshot of `user_ids` (all must be held), weights decayed to each user's newest event."""
        slots = np.fromiter((self._slots[u] for u in user_ids), np.int64, len(user_ids))
        codes = self._item_codes[slots]  # (B, L)
        weights = self._weights[slots]  # (B, L)
        last = self._last_event_ms[slots]  # (B,)
        weights = decayed(weights, self._times[slots], last[:, None], self._decay_per_ms)  # model_input's rule
        weights = np.where(codes >= 0, weights, 0.0).astype(np.float32)
        return StateBatch(
            user_ids=list(user_ids),
            item_codes=codes,
            weights=weights,
            events_seen=self._events_seen[slots],
            last_event_ms=last,
            last_event_ids=[self._last_event_id[s] for s in slots],
        )

    def forget_partitions(self, partitions: set[int]) -> int:
        """Drop users last seen on `partitions` (revoked from this worker); returns how many."""
        gone = [u for u, s in self._slots.items() if self._partition[s] in partitions]
        for user_id in gone:
            self._release(user_id)
        return len(gone)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._slots

    # --- slots -----------------------------------------------------------------------------

    def _slot_for(self, user_id: str) -> int:
        slot = self._slots.get(user_id)
        if slot is not None:
            self._slots.move_to_end(user_id)
            return slot
        if not self._free:
            if len(self._item_codes) < self.max_users:
                self._grow()
            else:
                self._release(next(iter(self._slots)))  # least recently active
                self.evicted_total += 1
        slot = self._free.pop()
        self._slots[user_id] = slot
        return slot

    def _release(self, user_id: str) -> None:
        slot = self._slots.pop(user_id)
        self._item_codes[slot] = -1
        self._weights[slot] = 0
        self._times[slot] = 0
        self._events_seen[slot] = 0
        self._last_event_ms[slot] = 0
        self._partition[slot] = -1
        self._last_event_id[slot] = ""
        self._free.append(slot)

    def _grow(self) -> None:
        old = len(self._item_codes)
        new = min(old * 2, self.max_users)
        extra = new - old

        def pad(array: np.ndarray, fill: int | float) -> np.ndarray:
            return np.concatenate([array, np.full((extra, *array.shape[1:]), fill, array.dtype)])

        self._item_codes = pad(self._item_codes, -1)
        self._weights = pad(self._weights, 0)
        self._times = pad(self._times, 0)
        self._events_seen = pad(self._events_seen, 0)
        self._last_event_ms = pad(self._last_event_ms, 0)
        self._partition = pad(self._partition, -1)
        self._last_event_id.extend([""] * extra)
        self._free.extend(range(new - 1, old - 1, -1))
