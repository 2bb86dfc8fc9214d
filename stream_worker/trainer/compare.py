"""Steps 4 and 5 of a round: the gate.

Candidate and serving model are scored on the same users: each user's input is their events before
T as the worker would hold them at T, the targets are the items they turned to after T. The
candidate is promoted unless its `promotion_metric` is below the serving model's by more than
`promotion_margin` of it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from models.base import Recommender
from models.evaluate import compute_metrics
from stream_worker.trainer.split import reindex_columns


@torch.inference_mode()
def ranked_quality(
    model: Recommender,
    model_item_ids: list[str],
    inputs: sp.csr_matrix,
    targets: sp.csr_matrix,
    item_ids: list[str],
    k: int,
    batch_users: int = 1024,
) -> dict[str, float]:
    """Recall@k (Liang normalisation) and NDCG@k of `model` on (inputs, targets), whose columns are
    `item_ids`; the model ranks its own catalog `model_item_ids`.

    As in the worker, input items the model does not know are ignored and input items are never
    recommended. A target the model does not know is a target it misses (it stays in the count),
    so a model with an older catalog is not flattered.
    """
    X = reindex_columns(inputs, item_ids, model_item_ids)  # (U, model items)
    position = {item_id: i for i, item_id in enumerate(item_ids)}
    back = np.array([position.get(item_id, -1) for item_id in model_item_ids], np.int64)  # model index -> column
    k = min(k, len(model_item_ids))
    hits = []
    for lo in range(0, X.shape[0], batch_users):
        x = torch.from_numpy(X[lo : lo + batch_users].toarray()).to(model.device)  # (B, model items)
        scores = model.score(x).float().masked_fill(x > 0, -torch.inf)
        top = back[torch.topk(scores, k, dim=1).indices.cpu().numpy()]  # (B, k) columns of item_ids, -1 unknown
        target = targets[lo : lo + batch_users].toarray() > 0  # (B, n_items)
        found = np.take_along_axis(target, np.maximum(top, 0), axis=1) & (top >= 0)
        hits.append(found)
    n_relevant = np.diff(targets.indptr)
    values = compute_metrics(
        np.concatenate(hits) if hits else np.zeros((0, k), bool), n_relevant, [f"recall@{k}", f"ndcg@{k}"], "min"
    )
    return {name: float(v.mean()) if len(v) else 0.0 for name, v in values.items()} | {"users": float(X.shape[0])}


def decide(
    candidate: float, serving: float | None, *, metric: str, margin: float, serving_version: int | None
) -> tuple[bool, str]:
    """(promote?, why): promote unless the candidate is below serving by more than `margin` of it."""
    if serving is None:
        return True, "no serving model to compare with"
    floor = serving * (1 - margin)
    if candidate >= serving:
        comparison = "at or above serving"
    elif candidate >= floor:
        comparison = f"within the margin of {margin:.0%}"
    else:
        comparison = f"below serving by more than the margin of {margin:.0%}"
    why = f"{metric} {candidate:.4f} vs serving v{serving_version}'s {serving:.4f}: {comparison} (floor {floor:.4f})"
    return candidate >= floor, why
