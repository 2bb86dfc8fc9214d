"""`score_bag` (histories as (item, weight) bags) gives the scores of `score` on the dense rows,
for every model kind: the sparse first layers of Mult-VAE/DAE and CFGAN, and the dense fallback."""

from __future__ import annotations

import pytest
import torch

from models.base import densify_bag, merge_repeats
from models.train import train_model

from .test_recommenders import BAG, QUICK


def bags(n_users: int, n_items: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random bags with repeated items, empty slots (-1), a zero weight and one empty user."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n_items, (n_users, length), generator=gen)  # (B, L)
    index[:, 1] = index[:, 0]  # every user repeats an item ...
    index[:, 2] = index[:, 0]  # ... three times
    index[1::2, length // 2 :] = -1  # half the users have empty slots
    index[3] = -1  # one user has no history at all
    weights = torch.rand(n_users, length, generator=gen) * 5  # (B, L)
    weights[0, 3] = 0.0  # a RATING of 0
    return index, weights


def test_merge_repeats_keeps_each_item_once_with_its_total_weight():
    index = torch.tensor([[4, -1, 2, 4, 4], [-1, -1, -1, -1, -1]])
    weights = torch.tensor([[1.0, 9.0, 2.0, 3.0, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0]])
    merged_index, merged_weights = merge_repeats(index, weights)
    pairs = {(i, w) for i, w in zip(merged_index[0].tolist(), merged_weights[0].tolist(), strict=True) if w}
    assert pairs == {(4, 4.5), (2, 2.0)}  # the empty slot's 9.0 is dropped
    assert merged_weights[1].tolist() == [0.0] * 5
    assert torch.equal(densify_bag(merged_index, merged_weights, 5), densify_bag(index, weights, 5))


def test_densify_bag_adds_repeats_and_skips_empty_slots():
    x = densify_bag(torch.tensor([[1, -1, 1, 0]]), torch.tensor([[1.0, 7.0, 2.0, 0.5]]), 3)
    assert x.tolist() == [[0.5, 3.0, 0.0]]


@pytest.mark.parametrize("kind", sorted(BAG))
def test_score_bag_equals_score_of_the_dense_rows(kind, planted):
    overrides = QUICK[kind] | ({"epochs": 2} if kind in ("multvae", "multdae", "cfgan") else {})
    model, _ = train_model(kind, planted, device="cpu", overrides=overrides)
    index, weights = bags(n_users=12, n_items=model.n_items, length=20)
    dense = model.score(densify_bag(index, weights, model.n_items))  # (B, I)
    sparse = model.score_bag(index, weights)
    assert sparse.shape == dense.shape == (12, model.n_items)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_sparse_first_layer_follows_the_weights_after_training_and_loading(planted):
    model, _ = train_model("multvae", planted, device="cpu", overrides=QUICK["multvae"] | {"epochs": 1})
    index, weights = bags(n_users=4, n_items=model.n_items, length=10)
    before = model.score_bag(index, weights)  # builds the transposed copy of the first layer
    model.fit(planted)  # trains the weights in place
    after = model.score_bag(index, weights)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, model.score(densify_bag(index, weights, model.n_items)), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", ["multvae", "cfgan"])
def test_score_bag_on_cuda_equals_the_dense_rows(kind, planted):
    model, _ = train_model(kind, planted, device="cuda", overrides=QUICK[kind] | {"epochs": 2})
    index, weights = (t.cuda() for t in bags(n_users=12, n_items=model.n_items, length=20))
    dense = model.score(densify_bag(index, weights, model.n_items))
    torch.testing.assert_close(model.score_bag(index, weights), dense, rtol=1e-4, atol=1e-4)
