"""Every model kind: learns planted structure, round-trips through a checkpoint, is seeded."""

from __future__ import annotations

import pytest
import torch

from models import REGISTRY, checkpoint
from models.evaluate import holdout_metrics
from models.splits import split_users_holdout
from models.train import make_config, train_model

# Small settings that learn the planted dataset (100 items) in well under a second each.
QUICK = {
    "pop": {},
    "ease": {"lam": 10.0},
    "itemknn": {"k": 20},
    "multvae": {"epochs": 30, "batch_size": 32, "hidden_dim": 64, "latent_dim": 16, "total_anneal_steps": 200},
    "multdae": {"epochs": 30, "batch_size": 32, "hidden_dim": 64, "latent_dim": 16},
    "cfgan": {"epochs": 30, "hidden_dim_G": 64, "hidden_dim_D": 32, "lr_G": 1e-3, "lr_D": 1e-3},
    # Sequence models: tested on ordered histories in test_sequence_models.py.
    "hstu": {"epochs": 20, "d_model": 32, "max_len": 20, "batch_size": 32, "dropout": 0.1, "lr": 5e-3},
    "sasrec": {"epochs": 20, "d_model": 32, "max_len": 20, "batch_size": 32, "dropout": 0.1, "lr": 5e-3},
}
# Kinds that learn from a matrix (the tests below); sequence models need ordered histories.
BAG = {kind: overrides for kind, overrides in QUICK.items() if not REGISTRY[kind].reads_order}


def test_every_registered_kind_has_quick_settings():
    assert set(REGISTRY) == set(QUICK), "add the new model kind to QUICK so every test covers it"


@pytest.fixture(scope="module")
def holdout(planted):
    return split_users_holdout(planted, 0.25, seed=0)


@pytest.mark.parametrize("kind", sorted(set(BAG) - {"pop"}))
def test_learned_models_beat_popularity_on_planted_structure(kind, holdout):
    train, fold_in, held_out = holdout
    pop, _ = train_model("pop", train)
    model, _ = train_model(kind, train, device="cpu", overrides=QUICK[kind])
    ours, baseline = holdout_metrics(model, fold_in, held_out, k=10), holdout_metrics(pop, fold_in, held_out, k=10)
    assert ours["ndcg@10"] > baseline["ndcg@10"] + 0.1, f"{kind} {ours} vs popularity {baseline}"


@pytest.mark.parametrize("kind", sorted(BAG))
def test_checkpoint_round_trip_gives_identical_scores(kind, planted, tmp_path):
    model, _ = train_model(
        kind,
        planted,
        device="cpu",
        overrides=QUICK[kind] | ({"epochs": 2} if kind in ("multvae", "multdae", "cfgan") else {}),
    )
    item_ids = [f"item-{i}" for i in range(planted.shape[1])]
    folder = checkpoint.save(model, tmp_path, item_ids=item_ids, metrics={"ndcg@10": 0.5})
    loaded = checkpoint.load(tmp_path)
    assert loaded.path == folder and loaded.metadata.kind == kind and loaded.metadata.item_ids == item_ids
    assert loaded.metadata.hyperparameters == model.hyperparameters()
    x = torch.from_numpy(planted[:16].toarray())
    assert torch.equal(model.score(x), loaded.model.score(x))


@pytest.mark.parametrize("kind", ["multvae", "multdae", "cfgan", "itemknn"])
def test_same_seed_same_model_other_seed_other_model(kind, planted):
    overrides = QUICK[kind] | ({"epochs": 3} if "epochs" in QUICK[kind] else {})
    x = torch.from_numpy(planted[:16].toarray())
    a = train_model(kind, planted, device="cpu", seed=7, overrides=overrides)[0].score(x)
    b = train_model(kind, planted, device="cpu", seed=7, overrides=overrides)[0].score(x)
    assert torch.equal(a, b)
    if kind != "itemknn":  # ItemKNN has no randomness at all
        c = train_model(kind, planted, device="cpu", seed=8, overrides=overrides)[0].score(x)
        assert not torch.equal(a, c)


def test_score_runs_without_gradients_in_eval_mode(planted):
    model, _ = train_model("multvae", planted, device="cpu", epochs=1)
    x = torch.from_numpy(planted[:4].toarray())
    scores = model.score(x)
    assert scores.shape == (4, planted.shape[1]) and not scores.requires_grad
    assert torch.equal(scores, model.score(x)), "dropout and z sampling must be off when scoring"


def test_latent_dim_means_the_size_of_z():
    model = REGISTRY["multvae"](50, make_config("multvae", {"latent_dim": 7, "hidden_dim": 11}))
    mu_q, logvar_q = model.net.encode(torch.rand(3, 50))
    assert mu_q.shape == logvar_q.shape == (3, 7)
    dae = REGISTRY["multdae"](50, make_config("multdae", {"latent_dim": 7}))
    assert dae.net.encode(torch.rand(3, 50))[0].shape == (3, 7)


def test_unknown_hyperparameter_is_a_clear_error(planted):
    with pytest.raises(ValueError, match="no hyperparameter"):
        train_model("ease", planted, overrides={"lambda": 3})
    with pytest.raises(ValueError, match="unknown model kind"):
        train_model("bpr", planted)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", sorted(BAG))
def test_cuda_training_and_scoring(kind, planted):
    model, _ = train_model(kind, planted, overrides=QUICK[kind])
    assert model.device.type == "cuda"
    scores = model.score(torch.from_numpy(planted[:8].toarray()).cuda())
    assert scores.device.type == "cuda" and torch.isfinite(scores).all()
