"""A synthetic catalog and users with latent preferences, for the demo and the tests.

Each user and item has a hidden factor vector; a user picks item i with probability
softmax(user . item_i / temperature) mixed with a popularity prior, so there is structure
for a model to learn, and a ground truth (`true_top`) to check recommendations against.
Nothing is downloaded; the same seed gives the same world and the same events.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from stream_worker.codec import UserEvent

EVENT_TYPES = ("VIEW", "CLICK", "ADD_TO_CART", "PURCHASE", "RATING")
EVENT_TYPE_P = (0.55, 0.25, 0.08, 0.07, 0.05)


@dataclass
class SyntheticWorld:
    n_users: int = 500
    n_items: int = 400
    n_factors: int = 6
    temperature: float = 0.35
    popularity_mix: float = 0.15
    seed: int = 7

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.user_factors = rng.normal(size=(self.n_users, self.n_factors)) / np.sqrt(self.n_factors)
        self.item_factors = rng.normal(size=(self.n_items, self.n_factors))
        popularity = rng.zipf(1.6, size=self.n_items).astype(float)
        popularity = np.minimum(popularity, 50)
        self.popularity = popularity / popularity.sum()  # (n_items,)
        logits = self.user_factors @ self.item_factors.T / self.temperature  # (n_users, n_items)
        logits -= logits.max(axis=1, keepdims=True)
        affinity = np.exp(logits)
        affinity /= affinity.sum(axis=1, keepdims=True)
        self.preference = (1 - self.popularity_mix) * affinity + self.popularity_mix * self.popularity
        self._cdf = np.cumsum(self.preference, axis=1)  # (n_users, n_items)
        self._cdf[:, -1] = 1.0

    def user_id(self, u: int) -> str:
        return f"u{u:05d}"

    def item_id(self, i: int) -> str:
        return f"i{i:05d}"

    def item_ids(self) -> list[str]:
        return [self.item_id(i) for i in range(self.n_items)]

    def true_top(self, u: int, k: int) -> list[str]:
        """The k items user u likes most in truth (by the generating preference)."""
        return [self.item_id(i) for i in np.argsort(-self.preference[u])[:k]]

    def sample(self, n_events: int, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, items, event type indices) of n_events draws, users uniform at random."""
        rng = np.random.default_rng(seed)
        users = rng.integers(0, self.n_users, size=n_events)
        draws = rng.random(n_events)
        items = np.empty(n_events, np.int64)
        for start in range(0, n_events, 4096):  # chunks keep the (chunk, n_items) compare small
            u, r = users[start : start + 4096], draws[start : start + 4096]
            items[start : start + 4096] = (self._cdf[u] < r[:, None]).sum(axis=1)
        types = rng.choice(len(EVENT_TYPES), size=n_events, p=EVENT_TYPE_P)
        return users, items, types

    def events(self, n_events: int, *, seed: int, start_ms: int, spacing_ms: int = 1) -> Iterator[UserEvent]:
        """n_events UserEvents, `spacing_ms` apart from `start_ms`; event ids are unique per seed."""
        users, items, types = self.sample(n_events, seed=seed)
        rng = np.random.default_rng(seed + 1)
        ratings = rng.integers(3, 6, size=n_events)
        for n in range(n_events):
            event_type = EVENT_TYPES[types[n]]
            yield UserEvent(
                event_id=f"s{seed}-{n}",
                user_id=self.user_id(int(users[n])),
                item_id=self.item_id(int(items[n])),
                event_type=event_type,
                value=float(ratings[n]) if event_type == "RATING" else None,
                event_time_ms=start_ms + n * spacing_ms,
            )
