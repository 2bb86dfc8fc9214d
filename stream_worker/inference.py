"""Inference: a batch of user states -> the model on its device -> masked top-K.

The state speaks in its own item codes; the model in its own vocabulary (the checkpoint's
`item_ids`). A lookup array maps one to the other and is extended as new items appear, so
per batch only (B, L) codes and weights travel to the device, where the dense (B, n_items)
input is scattered together, scored, masked and reduced to (B, K) before coming back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.checkpoint import LoadedModel
from stream_worker.state import ItemCodes, StateBatch


@dataclass
class Ranked:
    """Top-K per user: item ids and scores, best first (fewer than K if the catalog runs out)."""

    item_ids: list[list[str]]
    scores: list[list[float]]


class Inference:
    def __init__(self, loaded: LoadedModel, items: ItemCodes, device: torch.device, top_k: int) -> None:
        self.items = items
        self.device = device
        self.top_k = top_k
        self.swap(loaded)

    def swap(self, loaded: LoadedModel) -> None:
        """Serve `loaded` from the next batch on (call between batches only)."""
        self.loaded = loaded
        self.model = loaded.model.to(self.device)
        self.vocabulary = np.array(loaded.metadata.item_ids, dtype=object)
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
        known = index >= 0
        rows = torch.from_numpy(np.nonzero(known)[0]).to(self.device)
        cols = torch.from_numpy(index[known]).to(self.device)
        weights = torch.from_numpy(batch.weights[known]).to(self.device)

        with torch.inference_mode():
            x = torch.zeros(n_users, n_items, device=self.device)  # (B, n_items)
            x.index_put_((rows, cols), weights, accumulate=True)  # repeated items add up
            scores = self.model.score(x).float()  # (B, n_items)
            scores[rows, cols] = -torch.inf  # never recommend what the user already has
            k = min(self.top_k, n_items)
            top_scores, top_index = torch.topk(scores, k, dim=1)  # (B, k)
        top_scores, top_index = top_scores.cpu().numpy(), top_index.cpu().numpy()

        keep = np.isfinite(top_scores)  # False where a user has seen nearly the whole catalog
        return Ranked(
            item_ids=[self.vocabulary[top_index[b][keep[b]]].tolist() for b in range(n_users)],
            scores=[top_scores[b][keep[b]].tolist() for b in range(n_users)],
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
