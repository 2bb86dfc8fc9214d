"""One training entry for every model kind.

`train_model` does not know which model it trains: it looks the kind up in `REGISTRY`,
applies hyperparameter overrides to the model's own `Config` dataclass, moves the model to
the chosen device and calls `fit` (bag models, given a CSR matrix) or `fit_sequences`
(given a `Sequences`: sequence models natively, bag models through its bag view). The stream
worker's trainer, `streamrec train` and the offline evaluation all go through here, so a
model trains the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import scipy.sparse as sp
import torch

from models.base import REGISTRY, EpochCallback, FitReport, Recommender, pick_device
from models.seqtrain import ITEM_TABLE, SequenceRecommender
from models.sequences import Sequences


def make_config(kind: str, overrides: dict[str, Any] | None = None) -> Any:
    """The kind's default `Config` with `overrides` applied; unknown names are an error."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(sorted(REGISTRY))}")
    config = REGISTRY[kind].Config()
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{kind} has no hyperparameter {unknown}; it has {sorted(known)}")
    return dataclasses.replace(config, **overrides)


@dataclass
class TrainProgress:
    """What `train_model` tells an `on_progress` callback after each epoch."""

    epoch: int  # epochs done
    epochs: int  # epochs planned (early stopping in `on_epoch` may end training sooner)
    seconds: float  # since training started
    model: Recommender  # the model as it is now (e.g. to score validation users)
    loss: float | None = None  # this epoch's training loss (Mult-VAE/DAE: -ELBO; CFGAN: the generator's)

    @property
    def seconds_left(self) -> float:
        """Estimated from the mean epoch time so far."""
        return self.seconds / max(self.epoch, 1) * max(self.epochs - self.epoch, 0)


def train_model(
    kind: str,
    X: sp.csr_matrix | Sequences,
    *,
    device: torch.device | str | None = None,
    seed: int = 0,
    epochs: int | None = None,
    overrides: dict[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    initial: dict[str, torch.Tensor] | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> tuple[Recommender, FitReport]:
    """Create a `kind` model for X's catalog, train it on X and return it.

    X is a (n_users, n_items) CSR matrix or a `Sequences` (time-ordered histories); sequence
    models (`reads_order`) need the latter and raise a TypeError on a matrix.

    device None means `pick_device("auto")` (CUDA when torch sees a GPU). `epochs` is a
    shortcut for overrides={"epochs": n} and is ignored by models that do not iterate
    (popularity, EASE, ItemKNN). Same seed, same device -> same model. `initial` (tensors of a
    model of the same kind and config) warm-starts training from those weights; for a sequence
    model whose catalog grew since (new items appended), the new items get fresh rows
    (`models.seqtrain.grow_catalogue`).
    `on_progress` is called after each epoch of an iterative model, before `on_epoch` (for
    progress displays).
    """
    overrides = dict(overrides or {})
    config = make_config(kind, overrides)
    if epochs is not None and hasattr(config, "epochs"):
        config = dataclasses.replace(config, epochs=epochs)
    # Weights are drawn when the model is built, so seed before building, not only in fit.
    torch.manual_seed(seed)
    n_items = X.n_items if isinstance(X, Sequences) else X.shape[1]
    model = REGISTRY[kind](n_items, config)
    if initial is not None:
        if isinstance(model, SequenceRecommender) and initial[ITEM_TABLE].shape[0] - 1 < n_items:
            initial = model.grow_catalogue(initial, n_items, seed)
        model.load_tensors(initial)
    model.to(device if isinstance(device, torch.device) else pick_device(device or "auto"))
    if on_progress is not None:
        on_epoch = _with_progress(on_epoch, on_progress, getattr(config, "epochs", 1))
    if isinstance(X, Sequences):
        report = model.fit_sequences(X, seed=seed, on_epoch=on_epoch)
    else:
        report = model.fit(sp.csr_matrix(X), seed=seed, on_epoch=on_epoch)
    return model, report


def _with_progress(
    on_epoch: EpochCallback | None, on_progress: Callable[[TrainProgress], None], epochs: int
) -> EpochCallback:
    started = time.perf_counter()

    def hook(model: Recommender, epoch: int) -> bool | None:
        curve = getattr(model, "curve", None) or [{}]  # models that keep a training curve
        loss = curve[-1].get("loss", curve[-1].get("loss_G"))
        on_progress(TrainProgress(epoch, epochs, time.perf_counter() - started, model, loss))
        return on_epoch(model, epoch) if on_epoch is not None else None

    return hook
