"""Rolling per-user interaction state, held in compact NumPy arrays.

Each user owns one row ("slot") of fixed-width ring buffers holding their most recent
`recent_items` interactions: item code (int32), weight (float16) and event time (uint32
seconds), 10 bytes each as `model_input` defines them, so 100 interactions take 1,000 bytes.
No Python object is made per interaction; the only per-user objects are the user id (dict key)
and their last event id.
Memory is bounded: the arrays grow by doubling up to `max_users` rows, after which the
least recently active user that is not waiting to be scored is evicted; the item table holds
at most `max_items` ids, reclaiming those no held user references when it fills.

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
from stream_worker.model_input import (
    TIME_DTYPE,
    WEIGHT_DTYPE,
    decayed,
    interaction_weight,
    stored_times,
    stored_weights,
    times_ms_of,
)

_INITIAL_ROWS = 1024
_WEIGHT_MAX = float(np.finfo(WEIGHT_DTYPE).max)
_TIME_MAX_S = int(np.iinfo(TIME_DTYPE).max)


class ItemCodes:
    """Interns item ids to dense int32 codes (0, 1, 2, ...) in order of first sight.

    At most `max_items` ids are held. When the table is full, `UserState` reclaims the codes
    no held user references any more (`compact`); `generation` changes then, so a reader that
    caches something per code (inference's lookup) knows to rebuild it.
    """

    def __init__(self, max_items: int = 1_000_000) -> None:
        self.max_items = max_items
        self.code_of: dict[str, int] = {}
        self.ids: list[str] = []
        self.generation = 0

    def code(self, item_id: str) -> int:
        """The item's code, or -1 when the table is full (the interaction is kept without its item)."""
        code = self.code_of.get(item_id)
        if code is None:
            if len(self.ids) >= self.max_items:
                return -1
            code = self.code_of[item_id] = len(self.ids)
            self.ids.append(item_id)
        return code

    @property
    def full(self) -> bool:
        return len(self.ids) >= self.max_items

    def compact(self, referenced: np.ndarray) -> np.ndarray:
        """Keep only the `referenced` codes, renumbered densely in their old order; returns the
        old-code -> new-code map (-1 for dropped codes, plus a trailing -1 so that -1 maps to -1)."""
        keep = np.unique(referenced[referenced >= 0])
        remap = np.full(len(self.ids) + 1, -1, np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        self.ids = [self.ids[c] for c in keep.tolist()]
        self.code_of = {item_id: i for i, item_id in enumerate(self.ids)}
        self.generation += 1
        return remap

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class UserSnapshot:
    """One user's whole state, as the changelog stores it (interactions oldest first)."""

    user_id: str
    partition: int  # of the events topic, where this user's events live
    offset: int  # source offset of the newest event applied
    events_seen: int
    last_event_ms: int
    last_event_id: str
    item_ids: list[str]  # "" where the item table was full
    weights: np.ndarray  # float32, undecayed (values of float16, as the state holds them)
    times_ms: np.ndarray  # int64 event times, rounded down to the second as the state holds them


@dataclass
class SnapshotRows:
    """`UserSnapshot`s of B users at once, as the state's arrays: what the changelog encodes."""

    user_ids: list[str]
    partition: np.ndarray  # (B,) int32
    offset: np.ndarray  # (B,) int64
    events_seen: np.ndarray  # (B,) int64
    last_event_ms: np.ndarray  # (B,) int64
    last_event_ids: list[str]
    held: np.ndarray  # (B,) interactions held; columns < held are valid
    item_codes: np.ndarray  # (B, L) int32, oldest first, -1 where the item table was full
    weights: np.ndarray  # (B, L) float16, oldest first
    times_s: np.ndarray  # (B, L) uint32 seconds, oldest first


@dataclass
class StateBatch:
    """The state of B users, ready for scoring: their recent items in the sequence view
    (`models.sequences`: oldest first, left-padded with -1, the newest in the last column;
    `model_input.sequence_rows` gives the trainer the same rows), with decayed weights and times."""

    user_ids: list[str]
    item_codes: np.ndarray  # (B, L) int32, oldest first, -1 = empty slot (only on the left)
    weights: np.ndarray  # (B, L) float32, time-decayed; 0 where empty
    times_s: np.ndarray  # (B, L) uint32 event times in whole seconds; 0 where empty
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
        max_items: int = 1_000_000,
    ) -> None:
        self.max_users = max_users
        self.recent_items = recent_items
        self.event_weights = event_weights
        # Weight multiplier per millisecond of age is 2^(-age / half_life); 0 disables decay.
        self._decay_per_ms = math.log(2) / (decay_half_life_s * 1000) if decay_half_life_s > 0 else 0.0
        self.items = ItemCodes(max_items)
        self.items_dropped_total = 0  # interactions kept without their item: the item table was full

        rows = min(_INITIAL_ROWS, max_users)
        self._item_codes = np.full((rows, recent_items), -1, np.int32)
        self._weights = np.zeros((rows, recent_items), WEIGHT_DTYPE)
        self._times_s = np.zeros((rows, recent_items), TIME_DTYPE)
        self._events_seen = np.zeros(rows, np.int64)  # also the ring position: events_seen % L
        self._last_event_ms = np.zeros(rows, np.int64)
        self._partition = np.full(rows, -1, np.int32)
        self._offset = np.full(rows, -1, np.int64)  # source offset of the newest event applied
        self._last_event_id: list[str] = [""] * rows

        # user id -> slot, least recently active first (move_to_end on every event).
        self._slots: OrderedDict[str, int] = OrderedDict()
        # Users changed since they were last batched: never evicted, or their events would be lost.
        self._unbatched: set[str] = set()
        self._free: list[int] = list(range(rows - 1, -1, -1))
        self.evicted_total = 0
        self.replayed_total = 0  # events skipped because the user's state already reflects them

    def __len__(self) -> int:
        return len(self._slots)

    def apply(self, events: Iterable[tuple[UserEvent, int, int]]) -> set[str]:
        """Add (event, partition, offset) triples to their users' state; returns the users that changed.

        An event at or below the source offset the user's state already reflects (on the same
        partition) is a replay after a crash or a rebalance, and is skipped: state restored from
        the changelog plus the replayed tail of the log equals state that never stopped. An
        offset of -1 means unknown (never skipped)."""
        changed: set[str] = set()
        for event, partition, offset in events:
            slot = self._slot_for(event.user_id)
            if 0 <= offset <= self._offset[slot] and partition == self._partition[slot]:
                self.replayed_total += 1
                continue
            n = self._events_seen[slot]
            pos = n % self.recent_items
            self._item_codes[slot, pos] = self._item_code(event.item_id)
            weight = interaction_weight(self.event_weights, event.event_type, event.value)
            # = stored_weights, rounded through float32 as the trainer's float32 weights are
            self._weights[slot, pos] = np.float32(min(max(weight, -_WEIGHT_MAX), _WEIGHT_MAX))
            self._times_s[slot, pos] = min(max(event.event_time_ms // 1000, 0), _TIME_MAX_S)  # = stored_times
            self._events_seen[slot] = n + 1
            if event.event_time_ms >= self._last_event_ms[slot]:
                self._last_event_ms[slot] = event.event_time_ms
                self._last_event_id[slot] = event.event_id
            self._partition[slot] = partition
            self._offset[slot] = offset
            changed.add(event.user_id)
        self._unbatched |= changed
        return changed

    def batch(self, user_ids: list[str]) -> StateBatch:
        """Snapshot of `user_ids` (all must be held), weights decayed to each user's newest event."""
        slots = np.fromiter((self._slots[u] for u in user_ids), np.int64, len(user_ids))
        self._unbatched.difference_update(user_ids)
        # Ring positions, oldest first and left-padded: with n events seen, position (n + j) mod L
        # holds column j; while n < L the first L - n of those are the never-written (-1) slots.
        n = self._events_seen[slots]
        order = (n[:, None] + np.arange(self.recent_items)) % self.recent_items  # (B, L)
        rows = slots[:, None]
        codes = self._item_codes[rows, order]  # (B, L)
        weights = self._weights[rows, order]  # (B, L)
        times_s = self._times_s[rows, order]  # (B, L)
        last = self._last_event_ms[slots]  # (B,)
        weights = decayed(weights, times_ms_of(times_s), last[:, None], self._decay_per_ms)  # model_input's rule
        weights = np.where(codes >= 0, weights, 0.0).astype(np.float32)
        return StateBatch(
            user_ids=list(user_ids),
            item_codes=codes,
            weights=weights,
            times_s=np.where(codes >= 0, times_s, 0).astype(TIME_DTYPE),
            events_seen=self._events_seen[slots],
            last_event_ms=last,
            last_event_ids=[self._last_event_id[s] for s in slots],
        )

    def forget_partitions(self, partitions: set[int]) -> list[str]:
        """Drop users last seen on `partitions` (revoked from this worker); returns them."""
        gone = [u for u, s in self._slots.items() if self._partition[s] in partitions]
        for user_id in gone:
            self._release(user_id)
        return gone

    def forget(self, user_id: str) -> bool:
        """Drop one user (a deletion request); returns whether they were held."""
        if user_id not in self._slots:
            return False
        self._release(user_id)
        return True

    # --- snapshots (the changelog) ------------------------------------------------------------

    def snapshot(self, user_id: str) -> UserSnapshot:
        """Everything the state holds about one user, interactions oldest first."""
        rows = self.snapshot_rows([user_id])
        held = int(rows.held[0])
        return UserSnapshot(
            user_id=user_id,
            partition=int(rows.partition[0]),
            offset=int(rows.offset[0]),
            events_seen=int(rows.events_seen[0]),
            last_event_ms=int(rows.last_event_ms[0]),
            last_event_id=rows.last_event_ids[0],
            item_ids=[self.items.ids[c] if c >= 0 else "" for c in rows.item_codes[0, :held].tolist()],
            weights=rows.weights[0, :held].astype(np.float32),
            times_ms=times_ms_of(rows.times_s[0, :held]),
        )

    def snapshot_rows(self, user_ids: list[str]) -> SnapshotRows:
        """What `snapshot` gives for each of `user_ids`, as arrays (no Python object per interaction)."""
        slots = np.fromiter((self._slots[u] for u in user_ids), np.int64, len(user_ids))
        n = self._events_seen[slots]
        held = np.minimum(n, self.recent_items)
        # Ring positions, oldest first: the held ones start at (n - held) mod L.
        order = ((n - held) % self.recent_items)[:, None] + np.arange(self.recent_items)
        order %= self.recent_items
        rows = slots[:, None]
        return SnapshotRows(
            user_ids=list(user_ids),
            partition=self._partition[slots],
            offset=self._offset[slots],
            events_seen=n,
            last_event_ms=self._last_event_ms[slots],
            last_event_ids=[self._last_event_id[s] for s in slots.tolist()],
            held=held,
            item_codes=self._item_codes[rows, order],
            weights=self._weights[rows, order],
            times_s=self._times_s[rows, order],
        )

    def restore(self, snap: UserSnapshot) -> None:
        """Put a user back exactly as `snapshot` saw them (replacing what is held)."""
        self.forget(snap.user_id)
        slot = self._slot_for(snap.user_id)
        self._unbatched.discard(snap.user_id)  # restored users wait for their next event, not a flush
        held = len(snap.item_ids)
        positions = [(snap.events_seen - held + j) % self.recent_items for j in range(held)]
        self._item_codes[slot, positions] = [self._item_code(i) if i else -1 for i in snap.item_ids]
        self._weights[slot, positions] = stored_weights(snap.weights)
        self._times_s[slot, positions] = stored_times(snap.times_ms)
        self._events_seen[slot] = snap.events_seen
        self._last_event_ms[slot] = snap.last_event_ms
        self._last_event_id[slot] = snap.last_event_id
        self._partition[slot] = snap.partition
        self._offset[slot] = snap.offset

    def bytes_per_user(self) -> dict[str, int]:
        """Bytes each held user costs in the state's arrays: their interactions, and in all
        (with the per-user counters); the user id and last event id strings come on top."""
        interactions = sum(a.itemsize * a.shape[1] for a in (self._item_codes, self._weights, self._times_s))
        counters = sum(a.itemsize for a in (self._events_seen, self._last_event_ms, self._partition, self._offset))
        return {"interactions": interactions, "all": interactions + counters}

    def partition_of(self, user_id: str) -> int:
        return int(self._partition[self._slots[user_id]])

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._slots

    # --- items and slots -------------------------------------------------------------------

    def _item_code(self, item_id: str) -> int:
        if self.items.full and item_id not in self.items.code_of:
            # Reclaim the codes of items no held user remembers (one user streaming new ids
            # pushes their old ones out of the ring buffer, so those codes are free again).
            remap = self.items.compact(self._item_codes[list(self._slots.values())])
            self._item_codes = remap[self._item_codes]
        code = self.items.code(item_id)
        if code < 0:
            self.items_dropped_total += 1
        return code

    def _slot_for(self, user_id: str) -> int:
        slot = self._slots.get(user_id)
        if slot is not None:
            self._slots.move_to_end(user_id)
            return slot
        if not self._free:
            if len(self._item_codes) < self.max_users:
                self._grow()
            else:
                self._release(self._eviction_candidate())
                self.evicted_total += 1
        slot = self._free.pop()
        self._slots[user_id] = slot
        return slot

    def _eviction_candidate(self) -> str:
        """The least recently active user that is not waiting to be scored."""
        for user_id in self._slots:
            if user_id not in self._unbatched:
                return user_id
        raise RuntimeError(
            f"all {len(self._slots)} users in state wait to be scored; raise state_max_users "
            "(it must exceed max_flush_users + poll_max_records)"
        )

    def _release(self, user_id: str) -> None:
        slot = self._slots.pop(user_id)
        self._unbatched.discard(user_id)
        self._item_codes[slot] = -1
        self._weights[slot] = 0
        self._times_s[slot] = 0
        self._events_seen[slot] = 0
        self._last_event_ms[slot] = 0
        self._partition[slot] = -1
        self._offset[slot] = -1
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
        self._times_s = pad(self._times_s, 0)
        self._events_seen = pad(self._events_seen, 0)
        self._last_event_ms = pad(self._last_event_ms, 0)
        self._partition = pad(self._partition, -1)
        self._offset = pad(self._offset, -1)
        self._last_event_id.extend([""] * extra)
        self._free.extend(range(new - 1, old - 1, -1))
