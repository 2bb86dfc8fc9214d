"""Bag models answer the sequence calls through their bag view."""

from __future__ import annotations

import numpy as np
import torch

from models import REGISTRY
from models.base import densify_bag
from models.sequences import Sequences
from models.train import train_model

from .test_recommenders import QUICK


def test_bag_models_score_sequences_as_bags_of_weight_one(planted):
    model, _ = train_model("ease", planted, device="cpu", overrides=QUICK["ease"])
    codes = torch.tensor([[-1, -1, 3, 7, 3], [-1, -1, -1, -1, 4]])
    expected = model.score(densify_bag(codes, (codes >= 0).float(), model.n_items))
    torch.testing.assert_close(model.score_sequences(codes, None), expected)
    assert not REGISTRY["ease"].reads_order


def test_bag_models_fit_sequences_through_their_bag_view(planted):
    seqs = Sequences.from_csr_with_times(planted)
    a = REGISTRY["ease"](planted.shape[1], REGISTRY["ease"].Config(lam=10.0))
    a.fit_sequences(seqs)
    b, _ = train_model("ease", planted, device="cpu", overrides={"lam": 10.0})
    x = torch.from_numpy(planted[:5].toarray())
    torch.testing.assert_close(a.score(x), b.score(x))
    assert np.array_equal(seqs.to_csr().toarray(), planted.toarray())
