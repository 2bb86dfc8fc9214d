"""Inference: a batch of user states -> the model on its device -> masked top-K.

The state speaks in its own item codes; the model in its own vocabulary (the checkpoint's
`item_ids`). A lookup array maps one to the other and is extended as new items appear, so
per batch only (B, L) indices and weights travel to the device. There the model scores the
bags (`Recommender.score_bag`: Mult-VAE/DAE and CFGAN never build the dense (B, n_items)
input) or, for a sequence model (`reads_order`: SASRec, HSTU), the same rows as ordered codes
and times (`score_sequences`), the user's own items are set to -inf at their (B, L) positions only, and top-K
reduces the scores to (B, K) before they come back. The result stays in arrays: no Python
object per user or item is made here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from models.base import Recommender
from models.checkpoint import LoadedModel
from models.sequences import compact_left
from stream_worker.worker.state import ItemCodes, StateBatch


@dataclass
class Ranked:
    """Top-K per user, best first, as arrays.

    Row b holds `counts[b]` valid entries (fewer than K only when the user has seen nearly
    the whole catalog); the entries after them are padding (index -1, id "", score -inf).
    """

    index: np.ndarray  # (B, K) int64: the items' indices in `vocabulary`, -1 = padding
    top_ids: np.ndarray  # (B, K) object (str): vocabulary[index], "" = padding
    top_scores: np.ndarray  # (B, K) float32
    counts: np.ndarray  # (B,) int64: valid entries per row
    vocabulary: np.ndarray  # (n_items,) object (str): the serving model's item ids (shared, not copied)

    @classmethod
    def from_lists(cls, item_ids: list[list[str]], scores: list[list[float]]) -> Ranked:
        """The arrays for per-user lists given by hand (tests; callers without a model)."""
        vocabulary = np.array(sorted({item for row in item_ids for item in row}), dtype=object)
        position = {item: n for n, item in enumerate(vocabulary.tolist())}
        k = max((len(row) for row in item_ids), default=0)
        index = np.full((len(item_ids), k), -1, np.int64)
        top_scores = np.full((len(item_ids), k), -np.inf, np.float32)
        for b, (ids, row_scores) in enumerate(zip(item_ids, scores, strict=True)):
            index[b, : len(ids)] = [position[item] for item in ids]
            top_scores[b, : len(ids)] = row_scores
        return cls(
            index=index,
            top_ids=np.append(vocabulary, "")[index],
            top_scores=top_scores,
            counts=np.array([len(row) for row in item_ids], np.int64),
            vocabulary=vocabulary,
        )

    def row(self, b: int) -> list[tuple[str, float]]:
        """User b's list as (item id, score) pairs (for tests and per-record callers, not the hot path)."""
        n = int(self.counts[b])
        return list(zip(self.top_ids[b, :n].tolist(), self.top_scores[b, :n].tolist(), strict=True))

    # Per-user lists, the shape callers used before the arrays: a Python loop over users (made
    # once per batch, on first use), kept only until publishing encodes from the arrays
    # (stream_worker.worker.encoders).

    @cached_property
    def item_ids(self) -> list[list[str]]:
        return [self.top_ids[b, :n].tolist() for b, n in enumerate(self.counts.tolist())]

    @cached_property
    def scores(self) -> list[list[float]]:
        return [self.top_scores[b, :n].tolist() for b, n in enumerate(self.counts.tolist())]


class Inference:
    def __init__(
        self, loaded: LoadedModel, items: ItemCodes, device: torch.device, top_k: int, *, sparse: bool = True
    ) -> None:
        """`sparse=False` scores through the dense (B, n_items) input for every model kind
        (what `streamrec bench` compares against); the lists are the same up to float rounding."""
        self.items = items
        self.device = device
        self.top_k = top_k
        self.sparse = sparse
        self.swap(loaded)

    def swap(self, loaded: LoadedModel) -> None:
        """Serve `loaded` from the next batch on (call between batches only)."""
        self.loaded = loaded
        self.model = loaded.model.to(self.device)
        self.vocabulary = np.array(loaded.metadata.item_ids, dtype=object)
        self._padded_vocabulary = np.append(self.vocabulary, "")  # index -1 looks up ""
        self._index_of = {item_id: i for i, item_id in enumerate(loaded.metadata.item_ids)}
        # state item code -> model index (-1 = unknown); the last entry is a -1 sentinel, so
        # that code -1 (an empty ring slot) looks up -1 too.
        self._lookup = np.full(1, -1, np.int64)
        self._generation = self.items.generation

    @property
    def model_name(self) -> str:
        return self.loaded.metadata.name

    @property
    def model_version(self) -> int:
        return self.loaded.metadata.version

    def recommend(self, batch: StateBatch) -> Ranked:
        n_users, n_items = len(batch.user_ids), self.model.n_items
        index = self._model_index(batch.item_codes)  # (B, L), -1 = empty or unknown to the model
        # Flat positions of the user's own items in the (B, n_items) scores, to mask them.
        seen = (np.arange(n_users)[:, None] * n_items + index)[index >= 0]  # (n_seen,)
        k = min(self.top_k, n_items)

        with torch.inference_mode():
            index_t = torch.from_numpy(index).to(self.device)
            if self.model.reads_order:
                # The sequence view as it is (oldest first, left-padded); items unknown to the
                # model leave holes, closed up so the newest known item is in the last column.
                codes = compact_left(index_t)  # (B, L)
                scores = self.model.score_sequences(codes, torch.from_numpy(batch.times_s.astype(np.int64))).float()
            else:
                weights = np.where(index >= 0, batch.weights, 0).astype(np.float32)  # (B, L)
                weights_t = torch.from_numpy(weights).to(self.device)
                score_bag = (
                    self.model.score_bag if self.sparse else lambda i, w: Recommender.score_bag(self.model, i, w)
                )
                scores = score_bag(index_t, weights_t).float()  # (B, n_items)
            scores.view(-1).index_fill_(0, torch.from_numpy(seen).to(self.device), -torch.inf)
            top = torch.topk(scores, k, dim=1)  # (B, k)
        top_scores, top_index = top.values.cpu().numpy(), top.indices.cpu().numpy()

        valid = np.isfinite(top_scores)  # (B, k); sorted best first, so the valid ones lead each row
        index = np.where(valid, top_index, -1)
        return Ranked(
            index=index,
            top_ids=self._padded_vocabulary[index],
            top_scores=top_scores,
            counts=valid.sum(axis=1),
            vocabulary=self.vocabulary,
        )

    def _model_index(self, codes: np.ndarray) -> np.ndarray:
        """Model indices for state item codes (-1 stays -1); extends the lookup for new codes."""
        if self._generation != self.items.generation:  # the state renumbered its item codes
            self._lookup, self._generation = np.full(1, -1, np.int64), self.items.generation
        known = len(self._lookup) - 1
        if len(self.items) > known:
            new = [self._index_of.get(item_id, -1) for item_id in self.items.ids[known:]]
            self._lookup = np.concatenate([self._lookup[:-1], np.array(new, np.int64), [-1]])
        return self._lookup[codes]
