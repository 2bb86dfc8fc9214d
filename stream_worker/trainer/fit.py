"""Step 3 of a round: what is trained, and how.

The candidate is trained on the events before T, fed as the worker feeds a model
(`model_input.input_rows`: the last `state_recent_items` events per user, the worker's event weights
and decay), with the hyperparameters the offline evaluation chose (`served_overrides`; epochs by
early stopping on an earlier slice, `choose_epochs`, unless STREAMREC_TRAINER_EPOCHS is set),
optionally warm-started from the serving model (`warm_tensors`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from models.base import REGISTRY, Recommender
from models.checkpoint import LoadedModel
from models.presets import PATIENCE, SERVED
from models.seqtrain import remap_catalogue
from models.sequences import Sequences
from models.train import train_model
from stream_worker.config import Settings
from stream_worker.model_input import decay_rate_per_ms
from stream_worker.trainer.compare import ranked_quality
from stream_worker.trainer.split import MIN_EVAL_USERS, TemporalSplit, reindex_codes, reindex_columns, temporal_split
from stream_worker.trainer.window import EventWindow

log = logging.getLogger(__name__)


ITERATIVE = ("multvae", "multdae", "cfgan", "sasrec", "hstu")  # models whose epoch count is chosen on validation


# The offline evaluation annealed Mult-VAE's beta over 200 updates of batches of 100 on ML-100K's
# ~943 training users (10 updates an epoch): 20 epochs. The trainer keeps those 20 epochs at any size.
ANNEAL_EPOCHS = 20


def served_overrides(kind: str, n_users: int, recent_items: int) -> dict[str, Any]:
    """The hyperparameters a kind serves with (`models.presets.SERVED`), with Mult-VAE's annealing
    scaled to `n_users` and a sequence model's context set to the state's `recent_items` (what the
    worker gives it). Epochs: STREAMREC_TRAINER_EPOCHS, else chosen on validation (`choose_epochs`)."""
    overrides = {k: v for k, v in SERVED.get(kind, {}).items() if k != "epochs"}
    if kind == "multvae":
        updates_per_epoch = math.ceil(n_users / overrides["batch_size"])
        overrides["total_anneal_steps"] = ANNEAL_EPOCHS * updates_per_epoch
    if REGISTRY[kind].reads_order:
        overrides["max_len"] = recent_items
    return overrides


def training_input(kind: str, split: TemporalSplit, window_item_ids: list[str], item_ids: list[str]) -> Any:
    """What `kind` trains on, in the catalog `item_ids`: the split's training rows as a matrix, or,
    for a sequence model, the same states in the sequence view (oldest first)."""
    if not REGISTRY[kind].reads_order:
        return reindex_columns(split.train, window_item_ids, item_ids)
    codes = reindex_codes(split.train_codes, window_item_ids, item_ids)  # (U, L), -1 = empty
    held = codes >= 0
    return Sequences(
        [row[keep] for row, keep in zip(codes, held, strict=True)],
        len(item_ids),
        [row[keep] for row, keep in zip(split.train_times_s, held, strict=True)],
    )


def quality(model: Recommender, item_ids: list[str], split: TemporalSplit, window: EventWindow, k: int) -> dict:
    """`ranked_quality` of `model` (catalog `item_ids`) on the split's evaluation users."""
    return ranked_quality(
        model,
        item_ids,
        split.eval_inputs,
        split.eval_targets,
        window.item_ids,
        k,
        codes=split.eval_codes,
        times_s=split.eval_times_s,
    )


def choose_epochs(
    settings: Settings,
    window: EventWindow,
    cutoff_ms: int,
    item_ids: list[str],
    overrides: dict[str, Any],
    initial: dict[str, torch.Tensor] | None,
) -> int | None:
    """The epoch count, chosen as the offline evaluation chose it: early stopping (patience
    `models.evaluate.PATIENCE`) on validation data, here the events before `cutoff_ms` cut once
    more in time: train on the older part, score the promotion metric on the newer part after each
    epoch. None (the model's default) when too few users can be scored."""
    s = settings
    older = window.times_ms < cutoff_ms
    part = EventWindow(
        users=window.users[older],
        items=window.items[older],
        weights=window.weights[older],
        times_ms=window.times_ms[older],
        user_ids=window.user_ids,
        item_ids=window.item_ids,
        skipped=0,
    )
    val = temporal_split(
        part,
        holdout_fraction=s.trainer_holdout_fraction,
        not_before_ms=0,
        recent_items=s.state_recent_items,
        rate_per_ms=decay_rate_per_ms(s.decay_half_life_s),
    )
    if val.eval_inputs.shape[0] < MIN_EVAL_USERS:
        return None
    k = int(s.promotion_metric.split("@")[1])
    scores: list[float] = []

    def validate(model: Recommender, epoch: int) -> bool:
        scores.append(quality(model, item_ids, val, window, k)[s.promotion_metric])
        return epoch - (int(np.argmax(scores)) + 1) < PATIENCE

    X = training_input(s.trainer_model_kind, val, window.item_ids, item_ids)
    train_model(s.trainer_model_kind, X, overrides=overrides, on_epoch=validate, initial=initial)
    best = int(np.argmax(scores)) + 1
    log.info("chose %d epochs on validation (%s %.4f)", best, s.promotion_metric, scores[best - 1])
    return best


# Mult-VAE/DAE tensors whose size is the catalog, and the dimension that runs over items.
_ITEM_DIMS = {"q_layers.0.weight": 1, "p_layers.1.weight": 0, "p_layers.1.bias": 0}


def warm_tensors(serving: LoadedModel | None, kind: str, item_ids: list[str]) -> dict[str, torch.Tensor] | None:
    """The serving model's tensors laid out for the catalog `item_ids`, to start training from.

    Items the serving model knew keep their weights, new ones start at zero (a sequence model's
    new item rows: small random ones, `models.seqtrain.remap_catalogue`), items gone are
    dropped. None when there is nothing to start from: no serving model, another kind, or a
    kind whose item-sized tensors are not known here (Mult-VAE/DAE and the sequence models can
    change catalog).
    """
    if serving is None or serving.metadata.kind != kind:
        return None
    tensors = {name: t.detach().cpu() for name, t in serving.model.tensors().items()}
    if item_ids == serving.metadata.item_ids:
        return tensors
    position = {item_id: i for i, item_id in enumerate(serving.metadata.item_ids)}
    source = np.array([position.get(item_id, -1) for item_id in item_ids], np.int64)
    if REGISTRY[kind].reads_order:
        return remap_catalogue(tensors, source)
    if kind not in ("multvae", "multdae") or not set(_ITEM_DIMS) <= set(tensors):
        return None
    to_rows, from_rows = torch.from_numpy(np.flatnonzero(source >= 0)), torch.from_numpy(source[source >= 0])
    for name, dim in _ITEM_DIMS.items():
        old = tensors[name]
        shape = list(old.shape)
        shape[dim] = len(item_ids)
        tensors[name] = torch.zeros(shape, dtype=old.dtype).index_copy_(dim, to_rows, old.index_select(dim, from_rows))
    return tensors
