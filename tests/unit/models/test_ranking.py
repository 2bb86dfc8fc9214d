"""`rank`: exclusion, finite scores, one or many held-out items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ranking import rank


def test_rank_excludes_seen_items_but_never_the_target():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    exclude = torch.tensor([[True, True, False, False], [False, False, False, True]])
    ranking = rank(scores, torch.tensor([2, 3]), exclude, [1, 2])
    assert ranking.hits.tolist() == [[True, False], [True, False]]  # row 1: its target was "seen", kept
    values = ranking.metrics(["hr@1", "ndcg@2", "recall@2"])
    assert values["hr@1"].tolist() == [1.0, 1.0] and values["ndcg@2"].tolist() == [1.0, 1.0]


def test_rank_with_many_held_out_items_counts_them():
    scores = torch.tensor([[0.1, 0.9, 0.8, 0.7]])
    targets = torch.tensor([[True, False, True, True]])
    ranking = rank(scores, targets, None, [3])
    assert ranking.hits.tolist() == [[False, True, True]] and ranking.n_relevant.tolist() == [3]
    assert np.isclose(ranking.metrics(["precision@3"])["precision@3"][0], 2 / 3)


def test_rank_refuses_non_finite_scores():
    with pytest.raises(AssertionError, match="finite"):
        rank(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]), None, [1])
