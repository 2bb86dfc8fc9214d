"""Offline evaluation: model selection on validation, testing, the command line.

    .venv/bin/python -m models.evaluate --protocol chrono-loo --models sasrec,multvae,ease,pop --json out.json
    .venv/bin/python -m models.evaluate --protocol next-item --interactions Video.txt --negatives 100 \
        --models sasrec,ease,pop --seeds 1

The protocols live in `models.protocols`, the metrics and the one ranking function in
`models.ranking`, the grids and patience in `models.presets`; the names below re-export them.

Every protocol ranks the whole catalog for each test user after removing the items the
model was given as input ("full ranking"); users with nothing to predict are skipped. With
sampled negatives (next-item --negatives N), the metrics named `sampled_<metric>@k` rank the
target among its N candidates instead, next to the full-ranking ones of the same model.
Hyperparameters (a small grid per model, and the epoch count of iterative models through
early stopping) are chosen on validation data only; the test data is touched once per seed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from models import REGISTRY, Recommender, pick_device, report
from models.presets import GRIDS, PATIENCE, grid  # noqa: F401  (GRIDS, PATIENCE re-exported)
from models.protocols import (  # noqa: F401  (re-exported)
    DEFAULT_DATA_DIR,
    PROTOCOLS,
    PUBLISHED,
    Protocol,
    cfgan_ml100k,
    chrono_loo,
    next_item,
    strong_generalisation,
)
from models.ranking import (  # noqa: F401  (re-exported: these used to live here)
    compute_metrics,
    hit_rate_at_k,
    holdout_metrics,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    rank,
    rank_hits,
    recall_at_k,
)
from models.sequences import Sequences
from models.train import train_model

# ---------------------------------------------------------------------------------------------
# Model selection on validation data
# ---------------------------------------------------------------------------------------------


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
        values = metric_values(model, p, [p.select], p.val_input, p.val_target, p.val_sequences, p.val_candidates)
        return float(values[p.select].mean())

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


def _training_data(
    kind: str, X: sp.csr_matrix, seqs: Sequences | None, protocol: Protocol
) -> sp.csr_matrix | Sequences:
    """X for bag models, its time-ordered view for sequence models."""
    if not REGISTRY[kind].reads_order:
        return X
    if seqs is None:
        raise ValueError(f"{kind} reads item order, and protocol {protocol.name} has no time-ordered histories")
    return seqs


def _fit(
    kind: str, X: sp.csr_matrix | Sequences, overrides: dict, protocol: Protocol, seed: int, device
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
    X = _training_data(kind, protocol.tune_train, protocol.tune_sequences, protocol)
    for overrides in grid(kind, protocol.name):
        fitted = _fit(kind, X, overrides, protocol, seed, device)
        if best is None or fitted[1].val_score > best[1].val_score:
            best = fitted
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# Running a protocol
# ---------------------------------------------------------------------------------------------


SAMPLED = "sampled_"  # a metric named sampled_<metric>@k ranks the target among sampled candidates


def metric_values(
    model: Recommender,
    protocol: Protocol,
    names: list[str],
    inputs: sp.csr_matrix,
    targets: sp.csr_matrix,
    sequences: Sequences | None,
    candidates: sp.csr_matrix | None,
) -> dict[str, np.ndarray]:
    """Per-user values of `names`: plain names rank the whole catalog, `sampled_` ones only
    each user's `candidates` (one ranking pass per kind asked for)."""
    out: dict[str, np.ndarray] = {}
    for sampled in (False, True):
        group = [n for n in names if n.startswith(SAMPLED) == sampled]
        if not group:
            continue
        assert not sampled or candidates is not None, f"{group} need sampled candidates, and the protocol has none"
        bare = [n.removeprefix(SAMPLED) for n in group]
        k_max = max(int(name.split("@")[1]) for name in bare)
        hits, n_relevant = rank_hits(
            model, inputs, targets, k_max, sequences=sequences, candidates=candidates if sampled else None
        )
        values = compute_metrics(hits, n_relevant, bare, protocol.recall_normalise)
        out |= {name: values[b] for name, b in zip(group, bare, strict=True)}
    return out


def metrics_on_test(model: Recommender, protocol: Protocol) -> dict[str, np.ndarray]:
    """Per-user test values of every metric of the protocol."""
    p = protocol
    return metric_values(model, p, p.metrics, p.test_input, p.test_target, p.test_sequences, p.test_candidates)


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
        X = _training_data(kind, protocol.test_train, protocol.test_train_sequences, protocol)
        model, fitted = train_model(kind, X, device=device, seed=seed, overrides=selection.overrides)
        train_seconds = fitted.seconds
    values = metrics_on_test(model, protocol)
    run: dict[str, Any] = {
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
    interactions: Path | None = None,
    negatives: int | None = None,
) -> list[dict[str, Any]]:
    """Select, train and test each model under protocol `name` for seeds 0..seeds-1; one
    JSON-able dict per model (see `_aggregate`).

    `ratings` is the file of protocol "strong"; `interactions` (and `negatives`) those of
    "next-item" (see `models.protocols.next_item`).

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
    elif name == "next-item":
        if interactions is None:
            raise ValueError("protocol 'next-item' needs --interactions PATH (user item [timestamp] per line)")
        protocols = [next_item(Path(interactions), negatives, seed=0)] * seeds  # one split, one negative draw
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
    interactions: Path | None = None,
    negatives: int | None = None,
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
        protocol,
        models,
        ratings=ratings,
        seeds=seeds,
        data_dir=Path(data_dir),
        device=torch_device,
        jobs=jobs,
        interactions=interactions,
        negatives=negatives,
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
    parser.add_argument(
        "--interactions", type=Path, default=None, help="user item [timestamp] file, --protocol next-item"
    )
    parser.add_argument("--negatives", type=int, default=None, help="next-item: rank among N sampled negatives")
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
        args.json_out, args.plot_out, args.data_dir, args.device, args.jobs, args.interactions, args.negatives,
    )  # fmt: skip
