"""One round of the trainer end to end: window -> split -> fit -> compare -> save.

The candidate is saved either way, with the decision and its reason in its metadata; only a
promoted one becomes the serving version (`serving.json`); the service announces it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import checkpoint
from models.base import EpochCallback
from models.checkpoint import CheckpointError, LoadedModel
from models.train import train_model
from stream_worker.config import Settings
from stream_worker.model_input import decay_rate_per_ms
from stream_worker.trainer.compare import decide
from stream_worker.trainer.fit import (
    ITERATIVE,
    choose_epochs,
    quality,
    served_overrides,
    training_input,
    warm_tensors,
)
from stream_worker.trainer.split import MIN_EVAL_USERS, temporal_split
from stream_worker.trainer.window import read_window

log = logging.getLogger(__name__)


@dataclass
class Trained:
    path: Path
    metadata: checkpoint.CheckpointMetadata
    promoted: bool
    reason: str


def train_from_topic(settings: Settings, model_dir: Path, *, on_epoch: EpochCallback | None = None) -> Trained | None:
    """Read the window, train a candidate, compare it with the serving model, save it with the
    decision, and make it the serving version if promoted (announcing is the caller's job).

    Returns None (and saves nothing) when the window holds fewer than trainer_min_events, or
    when too few users have events after the cut-off to compare with a serving model.
    """
    s = settings
    window = read_window(s, since_ms=int((time.time() - s.trainer_window_s) * 1000))
    if len(window) < s.trainer_min_events:
        log.info("round skipped: %d events in the window, fewer than %d", len(window), s.trainer_min_events)
        return None
    serving = _load_serving(model_dir)
    split = temporal_split(
        window,
        holdout_fraction=s.trainer_holdout_fraction,
        not_before_ms=_trained_until(serving),
        recent_items=s.state_recent_items,
        rate_per_ms=decay_rate_per_ms(s.decay_half_life_s),
    )
    n_eval = split.eval_inputs.shape[0]
    if serving is not None and n_eval < MIN_EVAL_USERS:
        log.info(
            "round skipped: %d users have events after the cut-off (%d ms; serving v%d trained before %d ms), "
            "fewer than %d",
            n_eval,
            split.cutoff_ms,
            serving.metadata.version,
            _trained_until(serving),
            MIN_EVAL_USERS,
        )
        return None

    # The candidate's catalog: the items it trains on. Warm start maps the serving model's weights onto it.
    trained_items = np.flatnonzero(np.asarray(split.train.sum(axis=0)).ravel() > 0)
    item_ids = [window.item_ids[i] for i in trained_items]
    X = training_input(s.trainer_model_kind, split, window.item_ids, item_ids)
    overrides = served_overrides(s.trainer_model_kind, split.train.shape[0], s.state_recent_items)
    initial = warm_tensors(serving, s.trainer_model_kind, item_ids) if s.trainer_warm_start else None
    epochs = s.trainer_epochs
    if epochs is None and s.trainer_model_kind in ITERATIVE:
        epochs = choose_epochs(s, window, split.cutoff_ms, item_ids, overrides, initial)
    try:
        model, report = train_model(
            s.trainer_model_kind, X, epochs=epochs, overrides=overrides, on_epoch=on_epoch, initial=initial
        )
    except RuntimeError:  # the serving weights do not fit this configuration: train from scratch
        if initial is None:
            raise
        initial = None
        model, report = train_model(s.trainer_model_kind, X, epochs=epochs, overrides=overrides, on_epoch=on_epoch)

    metric, k = s.promotion_metric, int(s.promotion_metric.split("@")[1])
    metrics = quality(model, item_ids, split, window, k)
    serving_value = None
    if serving is not None:
        served = quality(serving.model, serving.metadata.item_ids, split, window, k)
        metrics |= {f"serving_{name}": value for name, value in served.items()}
        serving_value = served[metric]
    metrics["train_seconds"] = report.seconds
    serving_version = serving.metadata.version if serving is not None else None
    promoted, reason = decide(
        metrics[metric], serving_value, metric=metric, margin=s.promotion_margin, serving_version=serving_version
    )
    path = checkpoint.save(
        model,
        model_dir,
        item_ids=item_ids,
        name=s.trainer_model_kind,
        metrics=metrics,
        training={
            "source": f"topic:{s.events_topic}",
            "events": len(window),
            "users": split.train.shape[0],
            "window_start_ms": window.start_ms,
            "window_end_ms": window.end_ms,
            "cutoff_ms": split.cutoff_ms,  # trained only on events before this event time
            "train_events": split.train_events,
            "heldout_events": split.heldout_events,
            "skipped_records": window.skipped,
            "warm_start_from": serving_version if initial is not None else None,
            "epochs": epochs,
            "overrides": overrides,
        },
        promotion={
            "promoted": promoted,
            "reason": reason,
            "metric": metric,
            "candidate": metrics[metric],
            "serving": serving_value,
            "serving_version": serving_version,
            "margin": s.promotion_margin,
            "eval_users": n_eval,
        },
    )
    saved = checkpoint.read_metadata(path)
    if promoted:
        checkpoint.record_serving(model_dir, saved.version, action="promote", reason=reason)
    log.info(
        "%s v%d %s: %s (%d events, %d users, %d items, %.1fs training%s)",
        saved.name,
        saved.version,
        "PROMOTED" if promoted else "REJECTED",
        reason,
        len(window),
        split.train.shape[0],
        len(item_ids),
        report.seconds,
        f", warm start from v{serving_version}" if initial is not None else "",
    )
    _delete_old_versions(model_dir, s.trainer_keep_versions)
    return Trained(path=path, metadata=saved, promoted=promoted, reason=reason)


def _delete_old_versions(model_dir: Path, keep: int) -> None:
    """Old versions go, so that a round every few minutes does not fill the volume; a failure
    to delete is logged, not fatal: the round's candidate is saved and decided already."""
    try:
        deleted = checkpoint.prune(model_dir, keep)
    except (OSError, CheckpointError) as exc:
        log.warning("could not delete old versions in %s: %s", model_dir, exc)
        return
    if deleted:
        log.info("deleted versions %s from %s (keeping the newest %d, and those that served)", deleted, model_dir, keep)


def _load_serving(model_dir: Path) -> LoadedModel | None:
    try:
        return checkpoint.load(model_dir)
    except CheckpointError:
        return None


def _trained_until(serving: LoadedModel | None) -> int:
    """The event time before which the serving model may have seen events (0: it saw none of the stream).

    Older trainer checkpoints have no cut-off and trained on their whole window."""
    if serving is None:
        return 0
    training = serving.metadata.training
    if "cutoff_ms" in training:
        return int(training["cutoff_ms"])
    if "window_end_ms" in training:
        return int(training["window_end_ms"]) + 1
    return 0
