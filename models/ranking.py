"""The one rank-and-score function: every protocol, and the service's trainer, ranks through `rank`.

`rank` takes a batch of scores over the catalog, the held-out items to find, and the items
to exclude from the ranking (a user's other seen items, or, with sampled negatives, every
item outside the candidate set), and returns the top-k hits; `Ranking.metrics` turns them
into per-user HR / precision / recall / NDCG / MRR. `rank_hits` scores a model on users'
histories (as matrix rows, or in time order for sequence models) and ranks through `rank`.

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
import scipy.sparse as sp
import torch

from models.base import Recommender
from models.sequences import Sequences


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
    return np.asarray(hits[:, :k].any(axis=1), dtype=np.float64)


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


@torch.inference_mode()
def rank_hits(
    model: Recommender,
    inputs: sp.csr_matrix,
    targets: sp.csr_matrix,
    k: int,
    batch_users: int = 1024,
    *,
    sequences: Sequences | None = None,
    candidates: sp.csr_matrix | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(hits (U, k), n_relevant (U,)) for the users with at least one target item, through `rank`.

    Each user's history is scored (bag models: the input row; sequence models: the user's
    row of `sequences`, the same history in time order), the input items are removed from the
    ranking, and the top k of what remains is compared with the user's target row. With
    `candidates` (U, I), only each user's candidate items are ranked (sampled negatives).
    """
    assert inputs.shape == targets.shape, f"inputs {inputs.shape} and targets {targets.shape} differ"
    if model.reads_order and sequences is None:
        raise TypeError(f"{model.kind} reads item order: this protocol must give the inputs as sequences")
    users = np.flatnonzero(np.diff(targets.indptr))
    k = min(k, inputs.shape[1])
    hits = []
    for lo in range(0, len(users), batch_users):
        rows = users[lo : lo + batch_users]
        x = torch.from_numpy(inputs[rows].toarray().astype(np.float32)).to(model.device)  # (B, I)
        if model.reads_order:
            assert sequences is not None
            codes, times = sequences.batch(rows, getattr(model.config, "max_len", 200))
            scores = model.score_sequences(codes.to(model.device), None if times is None else times.to(model.device))
        else:
            scores = model.score(x)  # (B, I)
        exclude = x > 0
        if candidates is not None:
            exclude = torch.from_numpy(candidates[rows].toarray() == 0).to(model.device)
        target = torch.from_numpy(targets[rows].toarray() > 0).to(model.device)  # (B, I)
        hits.append(rank(scores, target, exclude, [k]).hits)
    n_relevant = np.diff(targets.indptr)[users]
    return np.concatenate(hits) if hits else np.zeros((0, k), bool), n_relevant


def holdout_metrics(
    model: Recommender,
    fold_in: sp.csr_matrix,
    held_out: sp.csr_matrix,
    k: int = 20,
    *,
    sequences: Sequences | None = None,
) -> dict[str, float]:
    """Recall@k (Liang normalisation) and NDCG@k of `model` on held-out users.

    For the streaming trainer's "is the new model better than the serving one" check: the
    model scores each user's fold_in row, fold_in items are masked, held_out items are the
    targets (see `models.splits.split_users_holdout`). A sequence model reads the same fold_in
    histories in time order from `sequences` (`split_users_holdout_in_time`).
    """
    hits, n_relevant = rank_hits(model, fold_in, held_out, k, sequences=sequences)
    values = compute_metrics(hits, n_relevant, [f"recall@{k}", f"ndcg@{k}"], "min")
    return {name: float(v.mean()) if len(v) else 0.0 for name, v in values.items()} | {"users": len(hits)}
