"""Hyperparameters in one place: what each kind serves with, the grids searched on validation
data, and the early-stopping patience.

`SERVED[kind]` are the overrides (of the kind's own `Config` defaults) a model is trained with
when nobody searches: the streaming trainer's first grid point and `streamrec train`.
`GRIDS[kind]` are searched on validation data by `models.evaluate`; iterative models also
choose their epoch count there (early stopping), "epochs" being the most they may train.
`PROTOCOL_GRIDS[protocol][kind]` replaces a kind's grid under one protocol (a catalog 20x
ML-100K's, where five EASE inverses or 200 Mult-VAE epochs do not fit the time budget).

The iterative models' single settings were themselves chosen on validation data (the
cfgan-ml100k carve-out and the chrono-loo validation items; see the README, "Results") under
the time budget of the whole evaluation: batches of 100 users instead of the papers' 500
(ML-100K has under 1,000 users, so 500 means two updates an epoch), the VAE's beta annealed
to its cap over 200 updates, and CFGAN at lr 1e-3 with one D and one G pass of batches of
32 per epoch and the paper's alpha = 0.1, instead of the authors' 1000 G passes at lr 1e-4.
SASRec and HSTU (2 blocks, max_len 200, AdamW, weight decay 0, early stopping after 10 epochs
without a better chrono-loo validation NDCG@10, scored every 2 epochs, seed 0, one point at a
time, not a full product): SASRec was
tried at batches of 32 and 128, lr 1e-3 and 2e-3 (at 32), d_model 64 and 128 (at 32),
dropout 0.2 and 0.5 (at 32), one head; the best, batches of 32, lr 1e-3, d_model 64, dropout
0.2, reached validation NDCG@10 0.112 (epoch 38); batches of 128 (ML-100K has 943 users: 8
updates an epoch) were at 0.064 after 8 epochs where batches of 32 were at 0.098 (that run
was stopped there), lr 2e-3 peaked at 0.106, d_model 128 at 0.108, dropout 0.5 had 0.1005
by epoch 46 (stopped there). HSTU, with the rest as SASRec's, reached 0.111 at batches of
32 in that script and 0.115 at batches of 128 in `models.evaluate --protocol chrono-loo`
(validated every epoch), which picked 128 over 32 there, so HSTU serves 128. GRIDS lets
`models.evaluate` pick, on validation, between the chosen point and one neighbour each
(SASRec: 2 heads, which it did not pick; HSTU: batches of 32), so the evaluation stays about
12 minutes on 2 shared cores. Under next-item on a catalog of ~24k items (SASRec's Amazon Games
file) an epoch of the full softmax takes minutes on 2 CPU cores: the sequence models read the last
50 items (SASRec's max_len for that data) and stop after at most 10 epochs, so that the whole
evaluation fits in 30 minutes there.
"""

from __future__ import annotations

from typing import Any

PATIENCE = 10  # epochs without a better validation score before an iterative model stops

SEQUENCE_DEFAULTS: dict[str, Any] = {
    "d_model": 64,
    "n_blocks": 2,
    "n_heads": 1,
    "dropout": 0.2,
    "lr": 1e-3,
    "batch_size": 32,
    "max_len": 200,
    "epochs": 200,
}

SERVED: dict[str, dict[str, Any]] = {
    "pop": {},
    "ease": {"lam": 500.0},
    "itemknn": {"k": 100, "shrink": 10.0},
    "multvae": {"batch_size": 100, "total_anneal_steps": 200},
    "multdae": {"batch_size": 100},
    "cfgan": {
        "epochs": 100,
        "steps_G": 1,
        "steps_D": 1,
        "lr_G": 1e-3,
        "lr_D": 1e-3,
        "batch_size_G": 32,
        "batch_size_D": 32,
        "alpha": 0.1,
    },
    "sasrec": SEQUENCE_DEFAULTS | {"dropout": 0.2},
    "hstu": SEQUENCE_DEFAULTS | {"dropout": 0.2, "batch_size": 128},
}

GRIDS: dict[str, list[dict[str, Any]]] = {
    "pop": [{}],
    "ease": [{"lam": lam} for lam in (50.0, 100.0, 200.0, 500.0, 1000.0)],
    "itemknn": [{"k": k, "shrink": shrink} for k in (20, 50, 100, 200, 400) for shrink in (0.0, 10.0)],
    "multvae": [SERVED["multvae"]],
    "multdae": [SERVED["multdae"]],
    "cfgan": [SERVED["cfgan"]],
    "sasrec": [SERVED["sasrec"], SERVED["sasrec"] | {"n_heads": 2}],
    "hstu": [SERVED["hstu"], SERVED["hstu"] | {"batch_size": 32}],
}

PROTOCOL_GRIDS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "next-item": {
        "ease": [{"lam": 500.0}],
        "itemknn": [{"k": 100, "shrink": 10.0}],
        "multvae": [{"batch_size": 500, "total_anneal_steps": 2000, "epochs": 30}],
        "multdae": [{"batch_size": 500, "epochs": 30}],
        "sasrec": [SERVED["sasrec"] | {"max_len": 50, "batch_size": 128, "epochs": 10}],
        "hstu": [SERVED["hstu"] | {"max_len": 50, "batch_size": 128, "epochs": 10}],
    },
}


def grid(kind: str, protocol: str | None = None) -> list[dict[str, Any]]:
    """The grid searched for `kind` under `protocol` (its own, else the kind's, else defaults only)."""
    return PROTOCOL_GRIDS.get(protocol or "", {}).get(kind) or GRIDS.get(kind, [{}])
