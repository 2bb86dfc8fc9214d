"""Online (prequential) evaluation: was the item of each incoming event in the list we last sent?

For every event of a user who has already been sent a list, two questions, counted per model
version of that list:
- model: was the event's item in the last list the worker published for the user?
- popularity: was it in the list a popularity recommender would have sent at the same moment,
  i.e. the K items with the highest exponentially decayed event counts on this same stream,
  leaving out the items the model had to leave out (those in the user's state)?

hit-rate@K = hits / events, from `streamrec_online_hits_total{model_version,recommender}` and
`streamrec_online_events_total{model_version}` (PromQL: a ratio of rates). Each event is judged
before it counts toward popularity, and against lists made before it arrived: test, then train.

Memory is bounded: two K-item lists per user for at most `max_users` users (least recently
active dropped first), and one float per item for the popularity counts.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry

from stream_worker.codec import UserEvent
from stream_worker.metrics import OnlineMetrics
from stream_worker.worker.state import ItemCodes, StateBatch

# Popularity counts halve every this many events, so the baseline follows what is popular now.
POPULARITY_HALF_LIFE_EVENTS = 10_000


class Popularity:
    """Exponentially decayed event counts per item code, and their top K."""

    def __init__(self, half_life_events: int = POPULARITY_HALF_LIFE_EVENTS) -> None:
        self.counts = np.zeros(1024, np.float64)
        self._growth = 2.0 ** (1.0 / half_life_events)
        # Instead of multiplying every count by 2^(-1/h) per event, each new event weighs
        # `_scale`, which grows by 2^(1/h) per event; rescaled before it can overflow.
        self._scale = 1.0

    def add(self, codes: np.ndarray) -> None:
        if len(codes) == 0:
            return
        if codes.max() >= len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(max(len(self.counts), int(codes.max()) + 1))])
        weights = self._scale * self._growth ** np.arange(len(codes))  # (n,) later events weigh more
        np.add.at(self.counts, codes, weights)
        self._scale *= self._growth ** len(codes)
        if self._scale > 1e100:
            self.counts /= self._scale
            self._scale = 1.0

    def top(self, n: int) -> np.ndarray:
        """The n item codes with the highest counts, highest first (fewer if fewer items were seen)."""
        seen = np.flatnonzero(self.counts)
        if len(seen) <= n:
            return seen[np.argsort(-self.counts[seen], kind="stable")]
        best = seen[np.argpartition(-self.counts[seen], n)[:n]]
        return best[np.argsort(-self.counts[best], kind="stable")]


class OnlineEvaluator:
    def __init__(self, top_k: int, max_users: int, registry: CollectorRegistry) -> None:
        self.top_k = top_k
        self.max_users = max_users
        self.metrics = OnlineMetrics(registry)
        self.popularity = Popularity()
        # user id -> (item ids of the model's last list, item codes of the popularity list, version label).
        # Ids, not state codes, for the model's list: it may name items this worker's state has not seen yet.
        self._last: OrderedDict[str, tuple[tuple[str, ...], array, str]] = OrderedDict()
        self._generation = 0  # of the state's item table, whose codes the counts and lists use

    def observe(self, events: Iterable[tuple[UserEvent, int, int]], items: ItemCodes) -> None:
        """Judge each (event, partition, offset) against the lists last sent to its user, then count it.

        Call after the state has applied the events (so every item has a code)."""
        if items.generation != self._generation:
            # The item table was compacted and its codes renumbered: counts and popularity lists
            # by the old codes would name other items. Start them again (this is rare: only when
            # the table fills); users are judged again from their next list.
            self.popularity = Popularity()
            self._last.clear()
            self._generation = items.generation
        codes: list[int] = []
        judged: dict[str, list[int]] = {}  # version -> [events, model hits, popularity hits]
        for event, *_where in events:
            code = items.code_of.get(event.item_id, -1)
            if code < 0:  # the item table was full: the item has no code to count
                continue
            codes.append(code)
            last = self._last.get(event.user_id)
            if last is None:
                continue
            model_list, popular_list, version = last
            counts = judged.setdefault(version, [0, 0, 0])
            counts[0] += 1
            counts[1] += event.item_id in model_list
            counts[2] += code in popular_list
        for version, (n, model_hits, popular_hits) in judged.items():
            self.metrics.events.labels(version).inc(n)
            self.metrics.hits.labels(version, "model").inc(model_hits)
            self.metrics.hits.labels(version, "popularity").inc(popular_hits)
        self.popularity.add(np.array(codes, np.int64))

    def sent(self, batch: StateBatch, recommended: list[list[str]], model_version: int) -> None:
        """Remember the lists just published for `batch`'s users, and the popularity lists of that moment."""
        k, version = self.top_k, str(model_version)
        codes = batch.item_codes  # (B, L), -1 = empty
        candidates = self.popularity.top(k + codes.shape[1])  # (C,) enough to survive any user's mask
        # Popular items in the user's state are left out, as the model had to leave them out:
        # (B, C) True where candidate c is in user b's state, via a code -> candidate position lookup.
        position = np.full(max(int(codes.max(initial=-1)), int(candidates.max(initial=-1))) + 2, -1, np.int64)
        position[candidates] = np.arange(len(candidates))
        found = position[codes]  # (B, L) candidate position of each state item, -1 = not a candidate
        in_state = np.zeros((len(codes), len(candidates)), bool)
        in_state[np.nonzero(found >= 0)[0], found[found >= 0]] = True
        keep = np.argsort(in_state, axis=1, kind="stable")[:, :k]  # (B, k) the first candidates not in state
        for b, user_id in enumerate(batch.user_ids):
            popular = array("q", candidates[keep[b][~in_state[b, keep[b]]]].tolist())  # 8 bytes an item
            self._last[user_id] = (tuple(recommended[b]), popular, version)
            self._last.move_to_end(user_id)
        while len(self._last) > self.max_users:
            self._last.popitem(last=False)
