"""The evaluation protocols: where models learn, where they are selected, where they are tested.

Each protocol states its assumptions in its docstring; `PUBLISHED` holds the numbers they
reproduce. Every protocol yields a `Protocol`, which `models.evaluate` runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from models.data import (
    chrono_loo_sequences,
    default_data_dir,
    load_cfgan_split,
    load_chrono_loo,
    load_interactions,
    load_ratings,
)
from models.sequences import Sequences
from models.splits import split_entries, split_fold_in

DEFAULT_DATA_DIR = default_data_dir()  # $STREAMREC_DATA_DIR, else ../shared/data beside the repository


@dataclass
class Protocol:
    """Where models learn, where they are selected and where they are tested.

    Validation: models are fitted on `tune_train`, score `val_input` rows, predict `val_target`.
    Test: the selected model (re-fitted on `test_train` when `refit`) scores `test_input` and
    predicts `test_target`. In each pair the input items are masked from the ranking.
    Sequence models read the `*_sequences` views of the same histories instead of the matrices.
    """

    name: str
    metrics: list[str]
    select: str  # the validation metric that picks hyperparameters and epochs
    recall_normalise: Literal["min", "all"]
    tune_train: sp.csr_matrix
    val_input: sp.csr_matrix
    val_target: sp.csr_matrix
    test_train: sp.csr_matrix
    test_input: sp.csr_matrix
    test_target: sp.csr_matrix
    # True when validation data was carved out of the training data: the final model is then
    # trained again on all of it, with the hyperparameters and epoch count chosen on validation.
    refit: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    # The same histories in time order, for sequence models (None: the protocol has no order).
    # tune_sequences / test_train_sequences are fitted on; val_sequences / test_sequences are
    # the inputs scored (rows as in val_input / test_input).
    tune_sequences: Sequences | None = None
    val_sequences: Sequences | None = None
    test_train_sequences: Sequences | None = None
    test_sequences: Sequences | None = None
    # With sampled negatives, the (U, I) items each user's target is ranked among for the
    # metrics named "sampled_<metric>@k" (None: no such metrics); the others rank every item.
    val_candidates: sp.csr_matrix | None = None
    test_candidates: sp.csr_matrix | None = None


def cfgan_ml100k(data_dir: Path, seed: int = 0) -> Protocol:
    """The CFGAN authors' own ML-100K split (Chae et al., CIKM 2018; their released code).

    Assumptions, as in the authors' code: every rating 1-5 is a positive; the test set is a
    global random 20% of the ratings; all 943 users are test users; the ranking is over all
    items minus the user's training items; recall divides by the number of test items;
    P, R, NDCG, MRR at 5 and 20. The split has no validation set, so 20% of the training
    ratings (globally at random, like the test split; seeded) are held out for tuning and the
    chosen model is re-fitted on the whole training set. The authors instead picked the
    number of epochs by looking at test accuracy (Pérez Maurera et al., ECIR 2022).
    """
    split = load_cfgan_split(Path(data_dir) / "ml-100k-cfgan-split")
    tune_train, validation = split_entries(split.train, 0.2, np.random.default_rng(seed))
    return Protocol(
        name="cfgan-ml100k",
        metrics=[f"{m}@{k}" for k in (5, 20) for m in ("precision", "recall", "ndcg", "mrr")],
        select="ndcg@20",
        recall_normalise="all",
        tune_train=tune_train,
        val_input=tune_train,
        val_target=validation,
        test_train=split.train,
        test_input=split.train,
        test_target=split.test,
        refit=True,
        info={"users": split.train.shape[0], "items": split.train.shape[1], "train": split.train.nnz},
    )


def chrono_loo(data_dir: Path, seed: int = 0) -> Protocol:
    """Chronological leave-one-out on ML-100K (Chin, Chen, Cong, "The Datasets Dilemma", WSDM 2022).

    Assumptions, as in the authors' code: every rating is a positive; items with < 5 ratings
    were dropped; each user's last interaction is the test item and the second-to-last the
    validation item; models are fitted on train only and score each user's train row both
    for validation and test (the validation item is neither input nor masked at test time);
    NDCG and Recall (= hit rate, one item) at 10, 20, 100; selection by validation NDCG@10.
    Sequence models read train.csv in time order: the split ships no timestamps, so they come
    from ml-100k/u.data (every pair is there; see ../shared/data/README.md).
    """
    folder = Path(data_dir) / "ml-100k-chrono-loo"
    split = load_chrono_loo(folder)
    assert split.validation is not None, "the chrono-loo folder must hold validation.csv"
    udata = Path(data_dir) / "ml-100k" / "u.data"
    train_seqs = chrono_loo_sequences(folder, udata) if udata.is_file() else None
    return Protocol(
        name="chrono-loo",
        metrics=[f"{m}@{k}" for m in ("ndcg", "recall") for k in (10, 20, 100)],
        select="ndcg@10",
        recall_normalise="min",
        tune_train=split.train,
        val_input=split.train,
        val_target=split.validation,
        test_train=split.train,
        test_input=split.train,
        test_target=split.test,
        info={"users": split.train.shape[0], "items": split.train.shape[1], "train": split.train.nnz},
        tune_sequences=train_seqs,
        val_sequences=train_seqs,
        test_train_sequences=train_seqs,
        test_sequences=train_seqs,
    )


@functools.lru_cache(maxsize=1)
def _liang_positives(ratings: Path) -> sp.csr_matrix:
    """Ratings >= 4 of users with at least 5 of them; read once for all seeds (ML-20M: ~20 s)."""
    X = load_ratings(ratings, min_rating=4).matrix
    return X[np.diff(X.indptr) >= 5]


def strong_generalisation(ratings: Path, seed: int = 0, heldout_fraction: float = 0.1) -> Protocol:
    """Strong generalisation (Liang et al., WWW 2018) on any MovieLens ratings file.

    Assumptions, as in the Mult-VAE preprocessing: ratings >= 4 are positives (ML-20M: > 3.5),
    users with >= 5 positives are kept; `heldout_fraction` of the users (at most 10,000, the
    paper's ML-20M count) are validation users and as many test users, chosen by `seed`; the
    rest train the models; only items seen in training are kept; each held-out user's items
    are split 80/20 at random into fold-in (the model's input) and held-out (to predict).
    Recall@20, Recall@50 (over min(k, n_heldout)), NDCG@100; selection by validation NDCG@100.
    """
    X = _liang_positives(Path(ratings))
    rng = np.random.default_rng(seed)
    n_heldout = min(10_000, round(heldout_fraction * X.shape[0]))
    assert 0 < 2 * n_heldout < X.shape[0], f"{X.shape[0]} users are too few to hold out {n_heldout} twice"
    users = rng.permutation(X.shape[0])
    test_users, val_users, train_users = np.split(users, [n_heldout, 2 * n_heldout])
    train = X[np.sort(train_users)]
    seen = np.flatnonzero(np.diff(sp.csc_matrix(train).indptr))  # items with a training interaction
    train = train[:, seen]
    val_input, val_target = split_fold_in(X[np.sort(val_users)][:, seen], 0.2, rng)
    test_input, test_target = split_fold_in(X[np.sort(test_users)][:, seen], 0.2, rng)
    return Protocol(
        name="strong",
        metrics=["recall@20", "recall@50", "ndcg@100"],
        select="ndcg@100",
        recall_normalise="min",
        tune_train=train,
        val_input=val_input,
        val_target=val_target,
        test_train=train,
        test_input=test_input,
        test_target=test_target,
        info={
            "users": X.shape[0],
            "items": len(seen),
            "train_users": train.shape[0],
            "heldout_users": n_heldout,
        },
    )


def _candidates(
    seqs: Sequences, users: np.ndarray, targets: np.ndarray, negatives: int, rng: np.random.Generator
) -> sp.csr_matrix:
    """(U, I) CSR: for each of `users`, its target and `negatives` items drawn uniformly, without
    replacement, from the items the user never interacted with."""
    n_items = seqs.n_items
    rows, cols = [], []
    for user, target in zip(users.tolist(), targets.tolist(), strict=True):
        seen = np.unique(seqs.codes[user])
        assert n_items - len(seen) >= negatives, f"user {user} has fewer than {negatives} unseen items"
        drawn = np.zeros(0, np.int64)
        while len(drawn) < negatives:  # rejection: draw, drop seen items and repeats, draw again
            more = rng.integers(0, n_items, 2 * negatives + 8)
            drawn = np.concatenate([drawn, more[~np.isin(more, seen)]])
            drawn = drawn[np.sort(np.unique(drawn, return_index=True)[1])]
        rows += [user] * (negatives + 1)
        cols += [target, *drawn[:negatives].tolist()]
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(seqs), n_items))


def next_item(path: Path, negatives: int | None = None, seed: int = 0) -> Protocol:
    """Next-item prediction, leave-one-out in time (SASRec, Kang & McAuley 2018) on any
    `user item [timestamp]` file (see `models.data.load_interactions`).

    Users with >= 3 interactions: the last is the test item, the second-to-last the
    validation item, the rest training; users with fewer only train. Models are fitted once on
    training; validation input = training, test input = training + validation (sequence models
    read them in time order, bag models as bags). Each target is ranked against every item,
    the user's other seen items excluded (full ranking), or, with `negatives` = N, against N
    items drawn uniformly from those the user never interacted with (seeded by `seed`; the
    same draw for every model). HR@10, NDCG@10, NDCG@20 in full ranking, and with `negatives`
    also `sampled_hr@10`, `sampled_ndcg@10` among the candidates, from the same model: one run
    gives both. Selection by validation NDCG@10 in full ranking, with or without `negatives`, so
    the full-ranking figures do not depend on whether negatives were drawn.
    """
    log = load_interactions(Path(path))
    seqs = log.sequences
    lengths = seqs.lengths()
    users = np.flatnonzero(lengths >= 3)
    assert len(users), f"{path}: no user has the 3 interactions leave-one-out needs"
    train = seqs.head(np.where(lengths >= 3, 2, 0))
    test_input = seqs.head(np.where(lengths >= 3, 1, 0))
    val_items = np.array([seqs.codes[u][-2] for u in users], np.int64)
    test_items = np.array([seqs.codes[u][-1] for u in users], np.int64)

    def one_per_user(items: np.ndarray) -> sp.csr_matrix:
        ones = np.ones(len(users), np.float32)
        return sp.csr_matrix((ones, (users, items)), shape=(len(seqs), seqs.n_items))

    val_candidates = test_candidates = None
    if negatives is not None:
        rng = np.random.default_rng(seed)
        val_candidates = _candidates(seqs, users, val_items, negatives, rng)
        test_candidates = _candidates(seqs, users, test_items, negatives, rng)
    train_csr = train.to_csr()
    return Protocol(
        name="next-item",
        metrics=["hr@10", "ndcg@10", "ndcg@20"] + ([] if negatives is None else ["sampled_hr@10", "sampled_ndcg@10"]),
        select="ndcg@10",
        recall_normalise="min",
        tune_train=train_csr,
        val_input=train_csr,
        val_target=one_per_user(val_items),
        test_train=train_csr,
        test_input=test_input.to_csr(),
        test_target=one_per_user(test_items),
        info={
            "file": str(path),
            "users": len(seqs),
            "items": seqs.n_items,
            "interactions": int(lengths.sum()),
            "test_users": len(users),
            "negatives": negatives,
        },
        tune_sequences=train,
        val_sequences=train,
        test_train_sequences=train,
        test_sequences=test_input,
        val_candidates=val_candidates,
        test_candidates=test_candidates,
    )


PROTOCOLS: dict[str, Callable[..., Protocol]] = {
    "cfgan-ml100k": cfgan_ml100k,
    "chrono-loo": chrono_loo,
    "strong": strong_generalisation,
    "next-item": next_item,
}

# Published numbers the protocols reproduce, for the table and the plot.
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "cfgan-ml100k": {
        # Chae et al. 2018, as tabulated by Pérez Maurera et al. (ECIR 2022 replication code).
        "CFGAN (published)": {
            "precision@5": 0.444, "precision@20": 0.294, "recall@5": 0.152, "recall@20": 0.360,
            "ndcg@5": 0.476, "ndcg@20": 0.433, "mrr@5": 0.681, "mrr@20": 0.693,
        },
    },
    "chrono-loo": {
        # Chin et al. 2022, Step 3/logs/ML-100K/<model>/___best_result___.txt.
        "WMF (published)": {
            "ndcg@10": 0.06995, "ndcg@20": 0.08554, "ndcg@100": 0.13104,
            "recall@10": 0.13680, "recall@20": 0.19830, "recall@100": 0.44857,
        },
        "Mult-VAE (published)": {
            "ndcg@10": 0.06486, "ndcg@20": 0.08630, "ndcg@100": 0.14300,
            "recall@10": 0.12831, "recall@20": 0.21315, "recall@100": 0.52916,
        },
        "ItemKNN (published)": {
            "ndcg@10": 0.06473, "ndcg@20": 0.08033, "ndcg@100": 0.13432,
            "recall@10": 0.12195, "recall@20": 0.18452, "recall@100": 0.48462,
        },
    },
    "strong": {
        # Liang et al. 2018 and Steck 2019 (ML-20M): comparable only when --ratings is ML-20M.
        "Mult-VAE (published, ML-20M)": {"recall@20": 0.395, "recall@50": 0.537, "ndcg@100": 0.426},
        "Mult-DAE (published, ML-20M)": {"recall@20": 0.387, "recall@50": 0.524, "ndcg@100": 0.419},
        "EASE (published, ML-20M)": {"recall@20": 0.391, "recall@50": 0.521, "ndcg@100": 0.420},
    },
}  # fmt: skip
