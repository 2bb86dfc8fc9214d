"""Offline evaluation: top-k metrics, three published protocols, model selection on validation.

    .venv/bin/python -m models.evaluate --protocol chrono-loo --models multvae,ease,pop --json out.json

Every protocol ranks the whole catalog for each test user after removing the items the
model was given as input ("full ranking"); users with nothing to predict are skipped.
Hyperparameters (a small grid per model, and the epoch count of iterative models through
early stopping) are chosen on validation data only; the test data is touched once per seed.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch

from models import REGISTRY, Recommender, pick_device, report
from models.data import default_data_dir, load_cfgan_split, load_chrono_loo, load_ratings
from models.ranking import (  # noqa: F401  (re-exported: the metrics used to live here)
    compute_metrics,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    rank,
    recall_at_k,
)
from models.sequences import Sequences
from models.splits import split_entries, split_fold_in
from models.train import train_model


@torch.inference_mode()
def rank_hits(
    model: Recommender,
    inputs: sp.csr_matrix,
    targets: sp.csr_matrix,
    k: int,
    batch_users: int = 1024,
    *,
    sequences: Sequences | None = None,
    candidates: sp.csr_matrix | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(hits (U, k), n_relevant (U,)) for the users with at least one target item, through `rank`.

    Each user's history is scored (bag models: the input row; sequence models: the user's
    row of `sequences`, the same history in time order), the input items are removed from the
    ranking, and the top k of what remains is compared with the user's target row. With
    `candidates` (U, I), only each user's candidate items are ranked (sampled negatives).
    """
    assert inputs.shape == targets.shape, f"inputs {inputs.shape} and targets {targets.shape} differ"
    if model.reads_order and sequences is None:
        raise TypeError(f"{model.kind} reads item order: this protocol must give the inputs as sequences")
    users = np.flatnonzero(np.diff(targets.indptr))
    k = min(k, inputs.shape[1])
    hits = []
    for lo in range(0, len(users), batch_users):
        rows = users[lo : lo + batch_users]
        x = torch.from_numpy(inputs[rows].toarray().astype(np.float32)).to(model.device)  # (B, I)
        if model.reads_order:
            assert sequences is not None
            codes, times = sequences.batch(rows, getattr(model.config, "max_len", 200))
            scores = model.score_sequences(codes.to(model.device), None if times is None else times.to(model.device))
        else:
            scores = model.score(x)  # (B, I)
        exclude = x > 0
        if candidates is not None:
            exclude = torch.from_numpy(candidates[rows].toarray() == 0).to(model.device)
        target = torch.from_numpy(targets[rows].toarray() > 0).to(model.device)  # (B, I)
        hits.append(rank(scores, target, exclude, [k]).hits)
    n_relevant = np.diff(targets.indptr)[users]
    return np.concatenate(hits) if hits else np.zeros((0, k), bool), n_relevant


def holdout_metrics(
    model: Recommender, fold_in: sp.csr_matrix, held_out: sp.csr_matrix, k: int = 20
) -> dict[str, float]:
    """Recall@k (Liang normalisation) and NDCG@k of `model` on held-out users.

    For the streaming trainer's "is the new model better than the serving one" check: the
    model scores each user's fold_in row, fold_in items are masked, held_out items are the
    targets (see `models.splits.split_users_holdout`).
    """
    hits, n_relevant = rank_hits(model, fold_in, held_out, k)
    values = compute_metrics(hits, n_relevant, [f"recall@{k}", f"ndcg@{k}"], "min")
    return {name: float(v.mean()) if len(v) else 0.0 for name, v in values.items()} | {"users": len(hits)}


# ---------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------

DEFAULT_DATA_DIR = default_data_dir()  # $STREAMREC_DATA_DIR, else ../shared/data beside the repository


@dataclass
class Protocol:
    """Where models learn, where they are selected and where they are tested.

    Validation: models are fitted on `tune_train`, score `val_input` rows, predict `val_target`.
    Test: the selected model (re-fitted on `test_train` when `refit`) scores `test_input` and
    predicts `test_target`. In each pair the input items are masked from the ranking.
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
    """
    split = load_chrono_loo(Path(data_dir) / "ml-100k-chrono-loo")
    assert split.validation is not None, "the chrono-loo folder must hold validation.csv"
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


PROTOCOLS: dict[str, Callable[..., Protocol]] = {
    "cfgan-ml100k": cfgan_ml100k,
    "chrono-loo": chrono_loo,
    "strong": strong_generalisation,
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


# ---------------------------------------------------------------------------------------------
# Model selection on validation data
# ---------------------------------------------------------------------------------------------

# Hyperparameter grids, searched on validation data. Iterative models also choose their epoch
# count there (early stopping); for them "epochs" is the most they may train.
#
# The iterative models' single settings were themselves chosen on validation data (the
# cfgan-ml100k carve-out and the chrono-loo validation items; see the README, "Results") under
# the time budget of the whole evaluation: batches of 100 users instead of the papers' 500
# (ML-100K has under 1,000 users, so 500 means two updates an epoch), the VAE's beta annealed
# to its cap over 200 updates, and CFGAN at lr 1e-3 with one D and one G pass of batches of
# 32 per epoch and the paper's alpha = 0.1, instead of the authors' 1000 G passes at lr 1e-4.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "pop": [{}],
    "ease": [{"lam": lam} for lam in (50.0, 100.0, 200.0, 500.0, 1000.0)],
    "itemknn": [{"k": k, "shrink": shrink} for k in (20, 50, 100, 200, 400) for shrink in (0.0, 10.0)],
    "multvae": [{"batch_size": 100, "total_anneal_steps": 200}],
    "multdae": [{"batch_size": 100}],
    "cfgan": [
        {
            "epochs": 100,
            "steps_G": 1,
            "steps_D": 1,
            "lr_G": 1e-3,
            "lr_D": 1e-3,
            "batch_size_G": 32,
            "batch_size_D": 32,
            "alpha": 0.1,
        }
    ],
}
PATIENCE = 10  # epochs without a better validation score before an iterative model stops


@dataclass
class EarlyStopping:
    """An `on_epoch` callback: scores validation data, keeps the best weights, stops on a plateau."""

    protocol: Protocol
    patience: int = PATIENCE
    curve: list[dict[str, float]] = field(default_factory=list)
    best: float = -np.inf
    best_epoch: int = 0
    best_tensors: dict[str, torch.Tensor] | None = None

    def validate(self, model: Recommender) -> float:
        p = self.protocol
        hits, n_relevant = rank_hits(model, p.val_input, p.val_target, int(p.select.split("@")[1]))
        return float(compute_metrics(hits, n_relevant, [p.select], p.recall_normalise)[p.select].mean())

    def __call__(self, model: Recommender, epoch: int) -> bool:
        value = self.validate(model)
        self.curve.append({"epoch": epoch, f"val_{self.protocol.select}": value})
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            self.best_tensors = {k: v.detach().clone() for k, v in model.tensors().items()}
        return epoch - self.best_epoch < self.patience


@dataclass
class Selection:
    """What validation chose: the grid point (plus "epochs" for iterative models) and its curve."""

    overrides: dict[str, Any]
    val_score: float
    curve: list[dict[str, float]]


def _fit(
    kind: str, X: sp.csr_matrix, overrides: dict, protocol: Protocol, seed: int, device
) -> tuple[Recommender, Selection, float]:
    """Train once on X with early stopping on the protocol's validation data."""
    stopper = EarlyStopping(protocol)
    model, fitted = train_model(kind, X, device=device, seed=seed, overrides=overrides, on_epoch=stopper)
    if stopper.best_tensors is None:  # not iterative: one validation score of the fitted model
        return model, Selection(dict(overrides), stopper.validate(model), fitted.curve), fitted.seconds
    model.load_tensors(stopper.best_tensors)
    by_epoch = {row["epoch"]: row for row in stopper.curve}
    curve = [row | by_epoch.get(row["epoch"], {}) for row in fitted.curve]
    return model, Selection(overrides | {"epochs": stopper.best_epoch}, stopper.best, curve), fitted.seconds


def select_model(
    kind: str, protocol: Protocol, seed: int, device: torch.device
) -> tuple[Recommender, Selection, float]:
    """(model, selection, seconds to train it): the grid point and epoch count with the best
    validation score, fitted on tune_train."""
    best = None
    for overrides in GRIDS.get(kind, [{}]):
        fitted = _fit(kind, protocol.tune_train, overrides, protocol, seed, device)
        if best is None or fitted[1].val_score > best[1].val_score:
            best = fitted
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# Running a protocol
# ---------------------------------------------------------------------------------------------


def metrics_on_test(model: Recommender, protocol: Protocol) -> dict[str, np.ndarray]:
    """Per-user test values of every metric of the protocol."""
    k_max = max(int(name.split("@")[1]) for name in protocol.metrics)
    hits, n_relevant = rank_hits(model, protocol.test_input, protocol.test_target, k_max)
    return compute_metrics(hits, n_relevant, protocol.metrics, protocol.recall_normalise)


def _select_job(kind: str, protocol: Protocol, seed: int, device: torch.device) -> Selection:
    return select_model(kind, protocol, seed, device)[1]


def _test_job(
    kind: str, protocol: Protocol, seed: int, device: torch.device, selection: Selection | None
) -> dict[str, Any]:
    """One model, one seed: select on validation (or re-fit what was selected), then test."""
    start = time.perf_counter()
    if selection is None:
        model, selection, train_seconds = select_model(kind, protocol, seed, device)
    else:
        model, fitted = train_model(kind, protocol.test_train, device=device, seed=seed, overrides=selection.overrides)
        train_seconds = fitted.seconds
    values = metrics_on_test(model, protocol)
    run = {
        "seed": seed,
        "metrics": {m: float(v.mean()) for m, v in values.items()},
        "se": {m: float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0 for m, v in values.items()},
        "users": len(next(iter(values.values()))),
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - start,
        "hyperparameters": selection.overrides,
        "val_" + protocol.select: selection.val_score,
        "curve": selection.curve,
    }
    print(
        f"{protocol.name} seed {seed} {kind:8s} {protocol.select}={run['metrics'][protocol.select]:.4f} "
        f"(val {selection.val_score:.4f}) {selection.overrides} {run['seconds']:.1f}s",
        flush=True,
    )
    return run


def _one_thread() -> None:
    # Parallel jobs each get one core: two processes with one thread each beat one process with
    # two threads on small matrices, and do not stall when another program holds a core.
    torch.set_num_threads(1)


def _map(fn: Callable[..., Any], tasks: list[tuple], jobs: int) -> list[Any]:
    """[fn(*task) for task in tasks], in `jobs` worker processes when jobs > 1 (order kept)."""
    if jobs <= 1 or len(tasks) <= 1:
        return [fn(*task) for task in tasks]
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
    with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context, initializer=_one_thread) as pool:
        return list(pool.map(fn, *zip(*tasks, strict=True)))


def run_protocol(
    name: str,
    models: list[str],
    *,
    ratings: Path | None,
    seeds: int,
    data_dir: Path,
    device: torch.device,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Select, train and test each model under protocol `name` for seeds 0..seeds-1.

    Every (model, seed) is an independent, seeded job, so `jobs` > 1 runs them in parallel
    processes without changing what each computes.
    """
    unknown = [m for m in models if m not in REGISTRY]
    assert not unknown, f"unknown models {unknown}; known: {sorted(REGISTRY)}"
    assert seeds >= 1, "seeds must be >= 1"
    if name == "strong":
        if ratings is None:
            raise ValueError("protocol 'strong' needs --ratings PATH (u.data, ratings.dat or ratings.csv)")
        protocols = [strong_generalisation(Path(ratings), seed) for seed in range(seeds)]  # a split per seed
    else:
        protocols = [PROTOCOLS[name](data_dir)] * seeds  # a fixed split; seeds vary the models only
    selections: dict[str, Selection] = {}
    if protocols[0].refit:
        # Selection happens once (seed 0) on the carved-out validation data; every seed then
        # trains the chosen configuration on the full training set.
        chosen = _map(_select_job, [(kind, protocols[0], 0, device) for kind in models], jobs)
        selections = dict(zip(models, chosen, strict=True))
    tasks = [(kind, protocols[seed], seed, device, selections.get(kind)) for seed in range(seeds) for kind in models]
    runs = _map(_test_job, tasks, jobs)
    by_model = {kind: [r for task, r in zip(tasks, runs, strict=True) if task[0] == kind] for kind in models}
    return [_aggregate(name, kind, by_model[kind], protocols[0]) for kind in models]


def _aggregate(name: str, kind: str, runs: list[dict[str, Any]], protocol: Protocol) -> dict[str, Any]:
    """One JSON object per model: mean over seeds of each metric, its standard errors, timings.

    `<metric>_se` is the standard error over test users (mean over seeds), the figure the
    published tables report; `<metric>_se_seeds` the standard error of the mean over seeds.
    """
    out: dict[str, Any] = {"protocol": name, "model": kind, "seeds": len(runs), "users": runs[0]["users"]}
    for m in protocol.metrics:
        values = np.array([r["metrics"][m] for r in runs])
        out[m] = float(values.mean())
        out[f"{m}_se"] = float(np.mean([r["se"][m] for r in runs]))
        out[f"{m}_se_seeds"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    out["train_seconds"] = float(np.mean([r["train_seconds"] for r in runs]))
    out["seconds"] = float(np.sum([r["seconds"] for r in runs]))
    out["data"] = protocol.info
    out["runs"] = runs
    return out


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(
    protocol: str,
    models: list[str],
    ratings: Path | None,
    seeds: int,
    json_out: Path | None,
    plot_out: Path | None,
    data_dir: Path,
    device: str = "auto",
    jobs: int | None = None,
) -> list[dict[str, Any]]:
    """`streamrec evaluate`: run one protocol for `models`, print a table, write JSON and a PNG.

    Returns the JSON objects (one per model, with every metric, `<metric>_se` over users,
    `<metric>_se_seeds` over seeds, `train_seconds`, the chosen hyperparameters and curves).
    jobs None: one process per CPU core, at most 2, on the CPU; 1 on a GPU.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    start = time.perf_counter()
    torch_device = pick_device(device)
    if jobs is None:
        jobs = 1 if torch_device.type == "cuda" else min(2, os.cpu_count() or 1)
    results = run_protocol(
        protocol, models, ratings=ratings, seeds=seeds, data_dir=Path(data_dir), device=torch_device, jobs=jobs
    )
    report.print_table(protocol, results, PUBLISHED.get(protocol, {}))
    print(f"{protocol}: {len(models)} model(s) x {seeds} seed(s) in {time.perf_counter() - start:.0f} s")
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(results, indent=1))
    if plot_out is not None:
        Path(plot_out).parent.mkdir(parents=True, exist_ok=True)
        report.plot(protocol, results, PUBLISHED.get(protocol, {}), Path(plot_out))
    return results


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=main.__doc__)
    parser.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
    parser.add_argument("--models", default="multvae,multdae,cfgan,ease,itemknn,pop")
    parser.add_argument("--ratings", type=Path, default=None, help="ratings file for --protocol strong")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, dest="json_out")
    parser.add_argument("--plot", type=Path, default=None, dest="plot_out")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--jobs", type=int, default=None, help="parallel processes (default: 2 on CPU, 1 on GPU)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(
        args.protocol, [m.strip() for m in args.models.split(",") if m.strip()], args.ratings, args.seeds,
        args.json_out, args.plot_out, args.data_dir, args.device, args.jobs,
    )  # fmt: skip
