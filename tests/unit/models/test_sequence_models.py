"""Sequence models (SASRec, HSTU): learn order, finite scores under heavy left padding,
checkpoints, catalog growth, and the interface the service calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import REGISTRY, checkpoint
from models.ranking import rank
from models.seqtrain import ITEM_TABLE, grow_catalogue
from models.sequences import Sequences
from models.train import make_config, train_model

from .test_recommenders import QUICK

SEQ = sorted(kind for kind in QUICK if REGISTRY[kind].reads_order)


def cycles(n_users: int = 240, n_items: int = 60, seed: int = 0) -> Sequences:
    """Each user walks the catalog upwards from a random start: the next item is always last + 1.

    A bag model cannot tell where a walk ends (it sees a set of consecutive items), but a model
    that reads order can: the item after the newest.
    """
    rng = np.random.default_rng(seed)
    codes, times = [], []
    for _ in range(n_users):
        start, length = rng.integers(n_items), rng.integers(6, 14)
        codes.append((start + np.arange(length)) % n_items)
        times.append(1000 + np.cumsum(rng.integers(1, 10_000, length)))
    return Sequences(codes, n_items, times)


@pytest.fixture(scope="module")
def walks() -> Sequences:
    return cycles()


def split_last(seqs: Sequences) -> tuple[Sequences, torch.Tensor]:
    return seqs.head(np.ones(len(seqs), np.int64)), torch.tensor([c[-1] for c in seqs.codes])


@pytest.mark.parametrize("kind", SEQ)
def test_sequence_models_learn_the_next_item_better_than_a_bag_model(kind, walks):
    inputs, last = split_last(walks)
    model, report = train_model(kind, inputs, device="cpu", overrides=QUICK[kind])
    ease, _ = train_model("ease", inputs, device="cpu", overrides=QUICK["ease"])
    codes, times = inputs.batch(np.arange(len(inputs)), 50)
    seen = torch.from_numpy(inputs.to_csr().toarray() > 0)
    ours = rank(model.score_sequences(codes, times), last, seen, [1]).metrics(["hr@1"])["hr@1"].mean()
    bag = rank(ease.score_sequences(codes, times), last, seen, [1]).metrics(["hr@1"])["hr@1"].mean()
    assert ours > 0.9 and ours > bag + 0.2, f"{kind} HR@1 {ours:.3f}, EASE {bag:.3f}"
    assert report.curve[-1]["loss"] < report.curve[0]["loss"]


@pytest.mark.parametrize("kind", SEQ)
def test_eval_scores_are_finite_and_left_padding_changes_nothing(kind, walks):
    """The trap: a query row whose keys are all masked (left padding) is NaN in softmax attention,
    and a NaN score compares false against everything, so a naive rank counter counts it a hit."""
    model, _ = train_model(kind, walks, device="cpu", overrides=QUICK[kind] | {"epochs": 1})
    codes = torch.full((4, 12), -1)
    codes[0, -1] = 5  # a row of length 1
    codes[1, -3:] = torch.tensor([7, 8, 9])
    codes[2, -12:] = torch.arange(12)
    # row 3: no history at all
    times = torch.where(codes >= 0, 1000 + torch.arange(12) * 60, 0)
    model.net.eval()
    scores = model.score_sequences(codes, times)
    assert scores.shape == (4, walks.n_items) and torch.isfinite(scores).all()
    more_padding = torch.cat([torch.full((4, 7), -1), codes], dim=1)
    more_times = torch.cat([torch.zeros(4, 7, dtype=torch.long), times], dim=1)
    again = model.score_sequences(more_padding, more_times)
    assert torch.isfinite(again).all()
    torch.testing.assert_close(again[:3], scores[:3], rtol=1e-5, atol=1e-5)
    hidden = model.net.hidden(more_padding, more_times)  # every position, padded ones included
    assert torch.isfinite(hidden).all()


@pytest.mark.parametrize("kind", SEQ)
def test_fit_on_a_matrix_is_a_clear_error(kind, planted):
    with pytest.raises(TypeError, match="time-ordered"):
        train_model(kind, planted, device="cpu", overrides=QUICK[kind])


@pytest.mark.parametrize("kind", SEQ)
def test_checkpoint_round_trip_and_seeding(kind, walks, tmp_path):
    model, _ = train_model(kind, walks, device="cpu", seed=3, overrides=QUICK[kind] | {"epochs": 2})
    item_ids = [f"item-{i}" for i in range(walks.n_items)]
    checkpoint.save(model, tmp_path, item_ids=item_ids)
    loaded = checkpoint.load(tmp_path)
    assert loaded.metadata.kind == kind and loaded.model.reads_order
    codes, times = walks.batch(np.arange(16), 30)
    assert torch.equal(model.score_sequences(codes, times), loaded.model.score_sequences(codes, times))
    same, _ = train_model(kind, walks, device="cpu", seed=3, overrides=QUICK[kind] | {"epochs": 2})
    other, _ = train_model(kind, walks, device="cpu", seed=4, overrides=QUICK[kind] | {"epochs": 2})
    assert torch.equal(same.score_sequences(codes, times), model.score_sequences(codes, times))
    assert not torch.equal(other.score_sequences(codes, times), model.score_sequences(codes, times))


@pytest.mark.parametrize("kind", SEQ)
def test_score_bag_reads_slots_in_order(kind, walks):
    model, _ = train_model(kind, walks, device="cpu", overrides=QUICK[kind] | {"epochs": 1})
    index = torch.tensor([[3, -1, 4, 5, -1]])
    weights = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    expected = model.score_sequences(torch.tensor([[-1, -1, 3, 4, 5]]), None)
    torch.testing.assert_close(model.score_bag(index, weights), expected)
    with pytest.raises(TypeError, match="score_sequences"):
        model.score(torch.zeros(1, walks.n_items))


@pytest.mark.parametrize("kind", SEQ)
def test_warm_start_grows_the_catalogue(kind, walks):
    old, _ = train_model(kind, walks, device="cpu", overrides=QUICK[kind] | {"epochs": 1})
    grown = grow_catalogue(old.tensors(), walks.n_items + 5)
    table = grown[ITEM_TABLE]
    assert table.shape[0] == walks.n_items + 6  # + the padding row, last
    assert torch.equal(table[: walks.n_items], old.tensors()[ITEM_TABLE][: walks.n_items])
    assert torch.equal(table[-1], torch.zeros_like(table[-1]))
    bigger = Sequences([*walks.codes, np.array([walks.n_items + 4, 1])], walks.n_items + 5)
    model, _ = train_model(kind, bigger, device="cpu", overrides=QUICK[kind] | {"epochs": 0}, initial=old.tensors())
    assert model.n_items == walks.n_items + 5
    assert torch.equal(model.tensors()[ITEM_TABLE][: walks.n_items], old.tensors()[ITEM_TABLE][: walks.n_items])


@pytest.mark.parametrize("kind", SEQ)
def test_time_buckets_are_optional_and_checkpointed(kind, walks, tmp_path):
    config = make_config(kind, QUICK[kind] | {"time_buckets": 8, "epochs": 1})
    model = REGISTRY[kind](walks.n_items, config)
    model.fit_sequences(walks)
    checkpoint.save(model, tmp_path, item_ids=[str(i) for i in range(walks.n_items)])
    codes, times = walks.batch(np.arange(8), 30)
    loaded = checkpoint.load(tmp_path).model
    assert torch.equal(loaded.score_sequences(codes, times), model.score_sequences(codes, times))
    assert not torch.equal(model.score_sequences(codes, times), model.score_sequences(codes, times * 1000))


def test_sasrec_positions_start_at_the_scale_of_the_items():
    """nn.Embedding's N(0, 1) positions would drown the items' N(0, 0.02) * sqrt(d_model) at the
    input, and SASRec then learned ML-100K several times slower (see models.sasrec)."""
    net = REGISTRY["sasrec"](100, make_config("sasrec", {"d_model": 64, "max_len": 200})).net
    item_scale = float(net.item_emb.weight[:100].detach().std()) * net.scale
    assert float(net.pos_emb.weight.detach().std()) < item_scale


def test_columns_that_are_padding_in_every_row_do_not_change_the_scores():
    from models.sasrec import SASRec

    torch.manual_seed(0)
    model = SASRec(30, SASRec.Config(d_model=16, n_blocks=2, max_len=12, dropout=0.0))
    rows = torch.tensor([[-1, -1, -1, 4, 5, 6], [-1, -1, -1, -1, 7, 8]])
    wide = torch.cat([torch.full((2, 6), -1), rows], dim=1)  # six more all-padding columns
    torch.testing.assert_close(model.score_sequences(wide), model.score_sequences(rows))
    torch.testing.assert_close(model.score_sequences(rows[:, 3:]), model.score_sequences(rows))
