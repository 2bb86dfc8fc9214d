"""Metric functions against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.base import FitReport, Recommender
from models.evaluate import (
    compute_metrics,
    holdout_metrics,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    rank_hits,
    recall_at_k,
)

# User A: hits at ranks 1 and 3 of 5, three held-out items. User B: one hit at rank 5, one held out.
HITS = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=bool)
N_RELEVANT = np.array([3, 1])


def test_precision_divides_by_k():
    assert precision_at_k(HITS, 5).tolist() == [2 / 5, 1 / 5]
    assert precision_at_k(HITS, 2).tolist() == [1 / 2, 0.0]


def test_recall_min_normalisation_and_textbook_recall():
    assert recall_at_k(HITS, N_RELEVANT, 5).tolist() == pytest.approx([2 / 3, 1.0])
    # At k=2 user A can hit at most 2 of 3 items: Liang et al. divide by min(2, 3).
    assert recall_at_k(HITS, N_RELEVANT, 2).tolist() == pytest.approx([1 / 2, 0.0])
    assert recall_at_k(HITS, N_RELEVANT, 2, normalise="all").tolist() == pytest.approx([1 / 3, 0.0])


def test_ndcg_by_hand():
    dcg_a = 1 / math.log2(2) + 1 / math.log2(4)
    idcg_a = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    dcg_b = 1 / math.log2(6)
    assert ndcg_at_k(HITS, N_RELEVANT, 5).tolist() == pytest.approx([dcg_a / idcg_a, dcg_b / 1.0])
    # The ideal ranking at k=1 has one hit, so a hit at rank 1 is perfect.
    assert ndcg_at_k(HITS, N_RELEVANT, 1).tolist() == pytest.approx([1.0, 0.0])


def test_mrr_is_the_first_hit_within_k():
    assert mrr_at_k(HITS, 5).tolist() == pytest.approx([1.0, 1 / 5])
    assert mrr_at_k(HITS, 4).tolist() == pytest.approx([1.0, 0.0])


def test_compute_metrics_parses_names_and_rejects_unknown_ones():
    values = compute_metrics(HITS, N_RELEVANT, ["precision@5", "recall@2", "ndcg@1", "mrr@4"], "min")
    assert values["recall@2"].tolist() == pytest.approx([1 / 2, 0.0])
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(HITS, N_RELEVANT, ["auc@5"], "min")


class FixedScores(Recommender):
    """Scores every user with the same fixed vector: item j scores scores[j]."""

    kind = "fixed-test"
    Config = dict

    def __init__(self, scores: list[float]) -> None:
        super().__init__(len(scores), {})
        self.scores = torch.tensor(scores)

    def fit(self, X, *, seed=0, on_epoch=None) -> FitReport:
        return FitReport()

    def score(self, X: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(X.shape[0], -1).clone()

    def tensors(self):
        return {"scores": self.scores}

    def load_tensors(self, tensors) -> None:
        self.scores = tensors["scores"]


def test_rank_hits_masks_input_items_and_skips_users_without_targets():
    model = FixedScores([5.0, 4.0, 3.0, 2.0, 1.0])
    inputs = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], np.float32))
    targets = sp.csr_matrix(np.array([[0, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], np.float32))
    hits, n_relevant = rank_hits(model, inputs, targets, k=3)
    # User 0 gave item 0, so the ranking is 1, 2, 3; user 1 has no targets; user 2's ranking is 0, 2, 3.
    assert hits.tolist() == [[True, False, False], [True, False, False]]
    assert n_relevant.tolist() == [2, 1]
    metrics = holdout_metrics(model, inputs, targets, k=3)
    assert metrics["users"] == 2
    assert metrics["recall@3"] == pytest.approx((1 / 2 + 1) / 2)
