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
from models.ranking import Ranking, rank
from models.sequences import compact_left
from stream_worker.trainer.split import reindex_codes, reindex_columns


@torch.inference_mode()
def ranked_quality(
    model: Recommender,
    model_item_ids: list[str],
    inputs: sp.csr_matrix,
    targets: sp.csr_matrix,
    item_ids: list[str],
    k: int,
    batch_users: int = 1024,
    *,
    codes: np.ndarray | None = None,
    times_s: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@k (Liang normalisation) and NDCG@k of `model` on (inputs, targets), whose columns are
    `item_ids`; the model ranks its own catalog `model_item_ids`, through `models.ranking.rank`.

    As in the worker, input items the model does not know are ignored and input items are never
    recommended. A target the model does not know is a target it misses (it stays in the count),
    so a model with an older catalog is not flattered. A sequence model (`reads_order`) reads the
    same inputs in the sequence view, `codes` (U, L) in `item_ids` codes with their `times_s`.
    """
    assert not model.reads_order or codes is not None, f"{type(model).__name__} needs the inputs as sequences"
    X = reindex_columns(inputs, item_ids, model_item_ids)  # (U, model items)
    Y = reindex_columns(targets, item_ids, model_item_ids)  # targets the model can rank
    seqs = reindex_codes(codes, item_ids, model_item_ids) if codes is not None else None
    n_relevant = np.diff(targets.indptr)  # all of them, known to the model or not
    k = min(k, len(model_item_ids))
    hits = []
    for lo in range(0, X.shape[0], batch_users):
        x = torch.from_numpy(X[lo : lo + batch_users].toarray()).to(model.device)  # (B, model items)
        if model.reads_order:
            assert seqs is not None and times_s is not None
            batch = compact_left(torch.from_numpy(seqs[lo : lo + batch_users]))  # (B, L)
            scores = model.score_sequences(batch, torch.from_numpy(times_s[lo : lo + batch_users]))
        else:
            scores = model.score(x)  # (B, model items)
        target = torch.from_numpy(Y[lo : lo + batch_users].toarray() > 0)
        hits.append(rank(scores, target, exclude=x > 0, k_values=[k]).hits)
    values = Ranking(np.concatenate(hits) if hits else np.zeros((0, k), bool), n_relevant).metrics(
        [f"recall@{k}", f"ndcg@{k}"], "min"
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
