"""The one rank-and-score function: every protocol, and the service's trainer, ranks through `rank`.

`rank` takes a batch of scores over the catalog, the held-out items to find, and the items
to exclude from the ranking (a user's other seen items, or, with sampled negatives, every
item outside the candidate set), and returns the top-k hits; `Ranking.metrics` turns them
into per-user HR / precision / recall / NDCG / MRR.

Metrics take `hits`, a (U, K) bool array: hits[u, r] is True when the item ranked at
position r (0 = top) for user u is one of u's held-out items, and, where needed,
`n_relevant` (U,), the number of held-out items of each user (>= 1). They return one value
per user, so means and standard errors are taken by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Hits in the top k, divided by k (even when the user has fewer than k held-out items)."""
    return hits[:, :k].sum(axis=1) / k


def recall_at_k(
    hits: np.ndarray, n_relevant: np.ndarray, k: int, *, normalise: Literal["min", "all"] = "min"
) -> np.ndarray:
    """Hits in the top k over min(k, n_relevant) (Liang et al., "min") or over n_relevant ("all").

    "min" keeps the maximum at 1 for users with more than k held-out items (Mult-VAE paper,
    Datasets Dilemma); "all" is the textbook recall used by the CFGAN authors' code.
    """
    denominator = np.minimum(k, n_relevant) if normalise == "min" else n_relevant
    return hits[:, :k].sum(axis=1) / denominator


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 when any held-out item is in the top k, else 0 (HR@k; = recall@k for one held-out item)."""
    return hits[:, :k].any(axis=1).astype(np.float64)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance NDCG: sum of 1/log2(rank + 2) over hits, over the best possible for
    min(k, n_relevant) relevant items (the definition of all three papers' code)."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    dcg = hits[:, :k] @ discount[: hits[:, :k].shape[1]]
    idcg = np.cumsum(discount)[np.minimum(k, n_relevant) - 1]
    return dcg / idcg


def mrr_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 / (rank of the first hit, counting from 1), or 0 when nothing is hit in the top k."""
    top = hits[:, :k]
    first = np.argmax(top, axis=1)  # index of the first True (0 when there is none)
    return np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)


def compute_metrics(
    hits: np.ndarray, n_relevant: np.ndarray, names: Sequence[str], recall_normalise: Literal["min", "all"]
) -> dict[str, np.ndarray]:
    """Per-user values of metrics named like "ndcg@10", "recall@20", "precision@5", "mrr@20", "hr@10"."""
    out = {}
    for name in names:
        metric, at = name.split("@")
        k = int(at)
        if metric == "precision":
            out[name] = precision_at_k(hits, k)
        elif metric == "recall":
            out[name] = recall_at_k(hits, n_relevant, k, normalise=recall_normalise)
        elif metric == "ndcg":
            out[name] = ndcg_at_k(hits, n_relevant, k)
        elif metric == "mrr":
            out[name] = mrr_at_k(hits, k)
        elif metric == "hr":
            out[name] = hit_rate_at_k(hits, k)
        else:
            raise ValueError(f"unknown metric {name!r}; use precision@k, recall@k, ndcg@k, mrr@k or hr@k")
    return out


@dataclass
class Ranking:
    """What `rank` found: hits (U, k) best first, and n_relevant (U,) held-out items per user."""

    hits: np.ndarray
    n_relevant: np.ndarray

    def metrics(self, names: Sequence[str], recall_normalise: Literal["min", "all"] = "min") -> dict[str, np.ndarray]:
        return compute_metrics(self.hits, self.n_relevant, names, recall_normalise)


def rank(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None,
    k_values: Sequence[int],
) -> Ranking:
    """Rank each row's items by score, excluded items removed, and mark the held-out ones in the top k.

    scores (B, I) float, all finite (asserted: a NaN compares false with everything, so it
    would never be outranked and could pass for a hit). targets: (B, I) bool, the held-out
    items of each row, or (B,) int64, one held-out item per row. exclude (B, I) bool or None:
    items removed from the ranking (set to -inf), e.g. the user's seen items; a held-out item
    is never excluded, so an item seen before and held out again can still be found.
    k = max(k_values), capped at I.
    """
    assert scores.dim() == 2, f"scores must be (B, n_items), got {tuple(scores.shape)}"
    assert bool(torch.isfinite(scores).all()), "scores must be finite: a NaN or inf score makes the ranking meaningless"
    B, n_items = scores.shape
    if targets.dim() == 1:
        targets = torch.zeros(B, n_items, dtype=torch.bool, device=scores.device).scatter_(
            1, targets.to(scores.device).view(-1, 1), True
        )  # (B, I)
    targets = targets.to(scores.device).bool()
    assert targets.shape == scores.shape, f"targets {tuple(targets.shape)} and scores {tuple(scores.shape)} differ"
    scores = scores.float()
    if exclude is not None:
        scores = scores.masked_fill(exclude.to(scores.device).bool() & ~targets, -torch.inf)  # (B, I)
    k = min(max(k_values), n_items)
    top = torch.topk(scores, k, dim=1).indices  # (B, k), best first
    hits = torch.gather(targets, 1, top).cpu().numpy()
    return Ranking(hits=hits, n_relevant=targets.sum(dim=1).cpu().numpy())
