"""Micro-batching: coalesce the users whose state changed until they are scored.

Several events of one user between two flushes become one inference. The worker flushes
greedily, as soon as a poll brings less than it could take (everything that had arrived);
while polls come back full (the worker is behind), a flush is `due`
when `max_size` users are waiting or the oldest uncommitted work has waited `max_wait_s`
(uncommitted work includes records that changed no user, e.g. dead letters, so their offsets
are committed too). Under load, flushes grow by themselves: more arrives while the model runs,
and a user with several events in one flush is scored once, with all of them. A flush is
scored in model calls of at most `chunk_size` users.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class MicroBatcher:
    def __init__(
        self,
        max_size: int,
        max_wait_s: float,
        chunk_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert max_size >= 1, "max_size must be at least 1"
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.chunk_size = chunk_size or max_size
        self._clock = clock
        self._waiting: dict[str, None] = {}  # an ordered set: first change first
        self._since: float | None = None  # when the oldest uncommitted work arrived

    def add(self, user_ids: Iterable[str]) -> None:
        """Users whose state changed (again) since the last flush."""
        self._waiting.update(dict.fromkeys(user_ids))
        self.note_pending()

    def note_pending(self) -> None:
        """Records were consumed that must be committed with the next flush."""
        if self._since is None:
            self._since = self._clock()

    def discard(self, user_ids: Iterable[str]) -> None:
        """Users who must not be scored any more (forgotten, or their partition left)."""
        for user_id in user_ids:
            self._waiting.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def pending(self) -> bool:
        return self._since is not None

    def waited_s(self) -> float:
        return 0.0 if self._since is None else self._clock() - self._since

    def due(self) -> bool:
        return len(self._waiting) >= self.max_size or (self._since is not None and self.waited_s() >= self.max_wait_s)

    def drain(self) -> list[list[str]]:
        """All waiting users in chunks of at most `chunk_size`, oldest change first; resets."""
        users = list(self._waiting)
        self._waiting.clear()
        self._since = None
        return [users[i : i + self.chunk_size] for i in range(0, len(users), self.chunk_size)]
