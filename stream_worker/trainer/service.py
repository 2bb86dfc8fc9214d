"""The periodic trainer: event log -> arrays -> candidate -> honest comparison -> promote or reject.

Each round
1. reads the events whose Kafka timestamps fall in the last `trainer_window_s` (up to the end
   offsets seen when the round starts, so a round always finishes) into NumPy columns, one
   consumed chunk at a time: ids are interned to int32 codes per chunk, and no Python object
   per event outlives its chunk (`WindowBuilder`);
2. cuts the window at an event time T: the freshest `trainer_holdout_fraction` of its events,
   and never anything the serving model trained on (T >= its own cut-off), are held out;
3. trains a candidate on the events before T, fed as the worker feeds a model
   (`model_input.input_rows`: the last `state_recent_items` events per user, the worker's event
   weights and decay), with the hyperparameters the offline evaluation chose (`served_overrides`;
   epochs by early stopping on an earlier slice, `choose_epochs`, unless STREAMREC_TRAINER_EPOCHS
   is set), optionally warm-started from the serving model (`warm_tensors`);
4. scores candidate and serving model on the same users: each user's input is their events
   before T as the worker would hold them at T, the targets are the items they turned to after T;
5. promotes the candidate unless its `promotion_metric` is below the serving model's by more
   than `promotion_margin` of it. The candidate is saved either way, with the decision and its
   reason in its metadata; only a promoted one becomes the serving version (`serving.json`) and
   is announced on the model-updates topic.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from confluent_kafka import Producer, TopicPartition
from prometheus_client import CollectorRegistry

from models import checkpoint
from models.base import EpochCallback, Recommender
from models.checkpoint import CheckpointError, LoadedModel
from models.evaluate import GRIDS, PATIENCE, compute_metrics
from models.train import train_model
from stream_worker import metrics as metrics_module
from stream_worker.channel.watcher import announce
from stream_worker.codec import USER_EVENT, DecodeError, InvalidEvent, make_codec, to_user_event
from stream_worker.config import Settings
from stream_worker.kafka.clients import new_producer, new_reader
from stream_worker.model_input import decay_rate_per_ms, input_rows
from stream_worker.worker.state import interaction_weight

log = logging.getLogger(__name__)

ITERATIVE = ("multvae", "multdae", "cfgan")  # models whose epoch count is chosen on validation
MIN_EVAL_USERS = 10  # fewer users with events after the cut-off: no comparison worth the name
# The offline evaluation annealed Mult-VAE's beta over 200 updates of batches of 100 on ML-100K's
# ~943 training users (10 updates an epoch): 20 epochs. The trainer keeps those 20 epochs at any size.
ANNEAL_EPOCHS = 20


# --- 1. the window as arrays -------------------------------------------------------------------


@dataclass
class EventWindow:
    """Events of one training window as parallel columns, in the order they were read
    (which keeps each user's events in arrival order: one user lives on one partition).
    User and item codes follow the sorted ids, so a window's arrays do not depend on the order
    in which its partitions were read."""

    users: np.ndarray  # (n,) int32 codes into user_ids
    items: np.ndarray  # (n,) int32 codes into item_ids
    weights: np.ndarray  # (n,) float32, `interaction_weight` of each event
    times_ms: np.ndarray  # (n,) int64 event time
    user_ids: list[str]
    item_ids: list[str]
    skipped: int  # records that did not decode or validate (the worker dead-letters them)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def start_ms(self) -> int:
        return int(self.times_ms.min()) if len(self) else 0

    @property
    def end_ms(self) -> int:
        return int(self.times_ms.max()) if len(self) else 0


class WindowBuilder:
    """Appends chunks of events to compact columns (20 bytes an event), interning ids per chunk.

    `array.array` grows in place without a Python object per element, so the window's memory
    is its columns plus the two id dictionaries (one entry per distinct user and item).
    """

    def __init__(self) -> None:
        self._user_code: dict[str, int] = {}
        self._item_code: dict[str, int] = {}
        self._users, self._items = array("i"), array("i")
        self._weights, self._times = array("f"), array("q")
        self._forgotten: dict[str, int] = {}  # user id -> events read before their deletion request
        self.skipped = 0

    def add_chunk(self, users: list[str], items: list[str], weights: list[float], times_ms: list[int]) -> None:
        # dict.setdefault(key, len(dict)) gives a new id the next code: len is taken before insertion.
        self._users.extend(self._user_code.setdefault(u, len(self._user_code)) for u in users)
        self._items.extend(self._item_code.setdefault(i, len(self._item_code)) for i in items)
        self._weights.extend(weights)
        self._times.extend(times_ms)

    def forget(self, user_id: str) -> None:
        """A deletion request (tombstone): none of the user's events read so far is trained on."""
        self._forgotten[user_id] = len(self._users)

    def __len__(self) -> int:
        return len(self._users)

    def build(self) -> EventWindow:
        users = np.frombuffer(self._users, np.int32)
        keep = slice(None)
        if self._forgotten:  # (B,) an event survives only if it came after its user's last deletion request
            cut = np.zeros(len(self._user_code), np.int64)
            for user_id, read_before in self._forgotten.items():
                if user_id in self._user_code:
                    cut[self._user_code[user_id]] = read_before
            keep = np.arange(len(users)) >= cut[users]
        # Codes in sorted id order, not first-read order: partitions interleave differently from one
        # read to the next, and the same window must give the same rows, columns and so the same model.
        user_ids, user_rank = _sorted_codes(self._user_code)
        item_ids, item_rank = _sorted_codes(self._item_code)
        return EventWindow(
            users=user_rank[users[keep]],
            items=item_rank[np.frombuffer(self._items, np.int32)[keep]],
            weights=np.frombuffer(self._weights, np.float32)[keep],
            times_ms=np.frombuffer(self._times, np.int64)[keep],
            user_ids=user_ids,
            item_ids=item_ids,
            skipped=self.skipped,
        )


def _sorted_codes(codes: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """(ids in sorted order, rank): `rank[code]` is the code's position among the sorted ids."""
    ids = sorted(codes)
    rank = np.empty(len(ids), np.int32)
    rank[[codes[i] for i in ids]] = np.arange(len(ids), dtype=np.int32)
    return ids, rank


def read_window(settings: Settings, *, since_ms: int, timeout_s: float = 600.0) -> EventWindow:
    """Every event on the events topic with a Kafka timestamp >= since_ms, up to the current end."""
    topic = settings.events_topic
    codec = make_codec(USER_EVENT, topic, settings.schema_registry_url)
    consumer = new_reader(settings, f"{settings.group_id}.trainer")
    window = WindowBuilder()
    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in partitions], timeout=10)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        # offset -1 = no record at or after since_ms in that partition: nothing to read there.
        todo = {tp.partition: tp.offset for tp in starts if 0 <= tp.offset < ends[tp.partition]}
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in todo.items()])

        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            users: list[str] = []
            items: list[str] = []
            weights: list[float] = []
            times: list[int] = []
            for msg in consumer.consume(1000, timeout=1.0):  # one chunk: at most 1000 events
                if msg.error():
                    continue
                if msg.offset() + 1 >= ends[msg.partition()]:
                    todo.pop(msg.partition(), None)
                if msg.value() is None and msg.key():  # "forget this user": drop what came before
                    window.add_chunk(users, items, weights, times)
                    users, items, weights, times = [], [], [], []
                    window.forget(msg.key().decode("utf-8", "replace"))
                    continue
                try:
                    event = to_user_event(codec.decode(msg.value() or b""), msg.key())
                except (DecodeError, InvalidEvent):
                    window.skipped += 1
                    continue
                users.append(event.user_id)
                items.append(event.item_id)
                weights.append(interaction_weight(settings.event_weights, event.event_type, event.value))
                times.append(event.event_time_ms)
            window.add_chunk(users, items, weights, times)
        if todo:
            raise TimeoutError(f"reading the training window did not reach the end offsets within {timeout_s}s")
    finally:
        consumer.close()
    return window.build()


# --- 2. the temporal split ---------------------------------------------------------------------


@dataclass
class TemporalSplit:
    """Training rows before the cut-off; evaluation inputs and targets around it.

    Columns of all three are the window's items (`EventWindow.item_ids`).
    """

    cutoff_ms: int  # events at or after this time are held out
    train: sp.csr_matrix  # (users with events before the cut-off, n_items): model input as the worker builds it
    train_events: int
    eval_inputs: sp.csr_matrix  # (U, n_items): each evaluated user's state at the cut-off
    eval_targets: sp.csr_matrix  # (U, n_items) 0/1: items of their events after it, not in their input
    heldout_events: int


def temporal_split(
    window: EventWindow, *, holdout_fraction: float, not_before_ms: int, recent_items: int, rate_per_ms: float
) -> TemporalSplit:
    """Cut `window` at the event time leaving `holdout_fraction` of its events after it (but not
    before `not_before_ms`), and build what the models train and are judged on."""
    times = window.times_ms
    # "higher": the cut-off is the time of an actual event, so at least `holdout_fraction` is held out.
    cutoff = max(int(np.quantile(times, 1 - holdout_fraction, method="higher")) if len(times) else 0, not_before_ms)
    before = times < cutoff
    n_users, n_items = len(window.user_ids), len(window.item_ids)
    state_at_cutoff = input_rows(
        window.users[before],
        window.items[before],
        window.weights[before],
        times[before],
        n_users=n_users,
        n_items=n_items,
        recent_items=recent_items,
        rate_per_ms=rate_per_ms,
    )  # (n_users, n_items)
    after = ~before
    targets = sp.csr_matrix(
        (np.ones(int(after.sum()), np.float32), (window.users[after], window.items[after])),
        shape=(n_users, n_items),
    )
    targets.data[:] = 1.0  # repeated events count once
    # The worker never recommends what a user's state holds, so those items cannot be targets.
    targets = (targets - targets.multiply(state_at_cutoff > 0)).tocsr()
    targets.eliminate_zeros()
    has_input = np.diff(state_at_cutoff.indptr) > 0
    evaluated = np.flatnonzero(has_input & (np.diff(targets.indptr) > 0))
    return TemporalSplit(
        cutoff_ms=cutoff,
        train=state_at_cutoff[np.flatnonzero(has_input)],
        train_events=int(before.sum()),
        eval_inputs=state_at_cutoff[evaluated],
        eval_targets=targets[evaluated],
        heldout_events=int(after.sum()),
    )


# --- 3. what is trained ------------------------------------------------------------------------


def served_overrides(kind: str, n_users: int) -> dict[str, Any]:
    """Hyperparameters of the configuration the offline evaluation chose for the iterative
    models (`models.evaluate.GRIDS`), with Mult-VAE's annealing scaled to `n_users`.

    For the models with a grid (EASE, ItemKNN) the winner differed between protocols, so they keep
    their `Config` defaults. Epochs: STREAMREC_TRAINER_EPOCHS, else chosen on validation (`choose_epochs`).
    """
    if kind not in ITERATIVE:
        return {}
    overrides = {k: v for k, v in GRIDS[kind][0].items() if k != "epochs"}
    if kind == "multvae":
        updates_per_epoch = math.ceil(n_users / overrides["batch_size"])
        overrides["total_anneal_steps"] = ANNEAL_EPOCHS * updates_per_epoch
    return overrides


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
        quality = ranked_quality(model, item_ids, val.eval_inputs, val.eval_targets, window.item_ids, k)
        scores.append(quality[s.promotion_metric])
        return epoch - (int(np.argmax(scores)) + 1) < PATIENCE

    X = reindex_columns(val.train, window.item_ids, item_ids)
    train_model(s.trainer_model_kind, X, overrides=overrides, on_epoch=validate, initial=initial)
    best = int(np.argmax(scores)) + 1
    log.info("chose %d epochs on validation (%s %.4f)", best, s.promotion_metric, scores[best - 1])
    return best


def reindex_columns(X: sp.csr_matrix, from_ids: list[str], to_ids: list[str]) -> sp.csr_matrix:
    """X with columns moved from one item vocabulary to another; items unknown there are dropped."""
    position = {item_id: i for i, item_id in enumerate(to_ids)}
    mapping = np.array([position.get(item_id, -1) for item_id in from_ids], np.int64)
    coo = X.tocoo()
    new_cols = mapping[coo.col]
    keep = new_cols >= 0
    return sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], new_cols[keep])), shape=(X.shape[0], len(to_ids)), dtype=np.float32
    )


# Mult-VAE/DAE tensors whose size is the catalog, and the dimension that runs over items.
_ITEM_DIMS = {"q_layers.0.weight": 1, "p_layers.1.weight": 0, "p_layers.1.bias": 0}


def warm_tensors(serving: LoadedModel | None, kind: str, item_ids: list[str]) -> dict[str, torch.Tensor] | None:
    """The serving model's tensors laid out for the catalog `item_ids`, to start training from.

    Items the serving model knew keep their weights, new ones start at zero, items gone are
    dropped. None when there is nothing to start from: no serving model, another kind, or a
    kind whose item-sized tensors are not known here (only Mult-VAE/DAE can change catalog).
    """
    if serving is None or serving.metadata.kind != kind:
        return None
    tensors = {name: t.detach().cpu() for name, t in serving.model.tensors().items()}
    if item_ids == serving.metadata.item_ids:
        return tensors
    if kind not in ("multvae", "multdae") or not set(_ITEM_DIMS) <= set(tensors):
        return None
    position = {item_id: i for i, item_id in enumerate(serving.metadata.item_ids)}
    source = np.array([position.get(item_id, -1) for item_id in item_ids], np.int64)
    to_rows, from_rows = torch.from_numpy(np.flatnonzero(source >= 0)), torch.from_numpy(source[source >= 0])
    for name, dim in _ITEM_DIMS.items():
        old = tensors[name]
        shape = list(old.shape)
        shape[dim] = len(item_ids)
        tensors[name] = torch.zeros(shape, dtype=old.dtype).index_copy_(dim, to_rows, old.index_select(dim, from_rows))
    return tensors


# --- 4. the comparison -------------------------------------------------------------------------


@torch.inference_mode()
def ranked_quality(
    model: Recommender,
    model_item_ids: list[str],
    inputs: sp.csr_matrix,
    targets: sp.csr_matrix,
    item_ids: list[str],
    k: int,
    batch_users: int = 1024,
) -> dict[str, float]:
    """Recall@k (Liang normalisation) and NDCG@k of `model` on (inputs, targets), whose columns are
    `item_ids`; the model ranks its own catalog `model_item_ids`.

    As in the worker, input items the model does not know are ignored and input items are never
    recommended. A target the model does not know is a target it misses (it stays in the count),
    so a model with an older catalog is not flattered.
    """
    X = reindex_columns(inputs, item_ids, model_item_ids)  # (U, model items)
    position = {item_id: i for i, item_id in enumerate(item_ids)}
    back = np.array([position.get(item_id, -1) for item_id in model_item_ids], np.int64)  # model index -> column
    k = min(k, len(model_item_ids))
    hits = []
    for lo in range(0, X.shape[0], batch_users):
        x = torch.from_numpy(X[lo : lo + batch_users].toarray()).to(model.device)  # (B, model items)
        scores = model.score(x).float().masked_fill(x > 0, -torch.inf)
        top = back[torch.topk(scores, k, dim=1).indices.cpu().numpy()]  # (B, k) columns of item_ids, -1 unknown
        target = targets[lo : lo + batch_users].toarray() > 0  # (B, n_items)
        found = np.take_along_axis(target, np.maximum(top, 0), axis=1) & (top >= 0)
        hits.append(found)
    n_relevant = np.diff(targets.indptr)
    values = compute_metrics(
        np.concatenate(hits) if hits else np.zeros((0, k), bool), n_relevant, [f"recall@{k}", f"ndcg@{k}"], "min"
    )
    return {name: float(v.mean()) if len(v) else 0.0 for name, v in values.items()} | {"users": float(X.shape[0])}


def decide(
    candidate: float, serving: float | None, *, metric: str, margin: float, serving_version: int | None
) -> tuple[bool, str]:
    """(promote?, why): promote unless the candidate is below serving by more than `margin` of it."""
    if serving is None:
        return True, "no serving model to compare with"
    floor = serving * (1 - margin)
    if candidate >= serving:
        comparison = "at or above serving"
    elif candidate >= floor:
        comparison = f"within the margin of {margin:.0%}"
    else:
        comparison = f"below serving by more than the margin of {margin:.0%}"
    why = f"{metric} {candidate:.4f} vs serving v{serving_version}'s {serving:.4f}: {comparison} (floor {floor:.4f})"
    return candidate >= floor, why


# --- the round -----------------------------------------------------------------------------------


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
    X = reindex_columns(split.train, window.item_ids, item_ids)
    overrides = served_overrides(s.trainer_model_kind, X.shape[0])
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
    metrics = ranked_quality(model, item_ids, split.eval_inputs, split.eval_targets, window.item_ids, k)
    serving_value = None
    if serving is not None:
        served = ranked_quality(
            serving.model, serving.metadata.item_ids, split.eval_inputs, split.eval_targets, window.item_ids, k
        )
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
            "users": X.shape[0],
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
        X.shape[0],
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


RETRY_AFTER_S = 10.0  # the first retry after a failed round; doubled after each further failure


def next_round_in(interval_s: float, failures: int) -> float:
    """Seconds to the next round: the interval, or sooner after failed rounds (e.g. Kafka away
    for a moment), 10 s, 20 s, 40 s ... but never longer than the interval."""
    if failures == 0:
        return interval_s
    return min(interval_s, RETRY_AFTER_S * 2 ** (failures - 1))


class Trainer:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        if settings.model_dir is None:
            raise ValueError("the trainer needs a model directory: pass --model-dir DIR or set STREAMREC_MODEL_DIR")
        self.settings = settings
        self.model_dir = Path(settings.model_dir)
        if settings.trainer_torch_threads:
            torch.set_num_threads(settings.trainer_torch_threads)
        self.metrics = metrics_module.TrainerMetrics(registry or CollectorRegistry())
        self.metrics.build_info.info(metrics_module.build_labels(settings.trainer_model_kind))
        self.stop = threading.Event()
        self._producer: Producer | None = None  # announces each round; made at the first announcement

    def producer(self) -> Producer:
        """The announcing producer, made on first use: a trainer that never announces never dials Kafka."""
        if self._producer is None:
            self._producer = new_producer(self.settings)
        return self._producer

    def run(self, *, once: bool = False) -> None:
        """A round now, then one every `trainer_interval_s` until `stop` is set (or just one)."""
        server = None
        if self.settings.trainer_metrics_port and not once:
            server = metrics_module.serve(
                self.metrics.registry,
                self.settings.metrics_host,
                self.settings.trainer_metrics_port,
                healthy=lambda: (True, "ok"),
                ready=lambda: (True, "ok"),
            )
        failures = 0  # rounds failed in a row
        try:
            while not self.stop.is_set():
                try:
                    self.round()
                    failures = 0
                except Exception:
                    failures += 1
                    self.metrics.rounds.labels("failed").inc()
                    log.exception("training round failed; the serving model stays")
                    if once:
                        raise
                if once:
                    return
                self.stop.wait(next_round_in(self.settings.trainer_interval_s, failures))
        finally:
            if server is not None:
                server.shutdown()

    def round(self, on_epoch: Callable[[Recommender, int], bool | None] | None = None) -> Path | None:
        """One training round; returns the candidate's folder (promoted or not), or None if skipped."""
        started = time.perf_counter()
        trained = train_from_topic(self.settings, self.model_dir, on_epoch=on_epoch)
        if trained is None:
            self.metrics.rounds.labels("skipped").inc()
            return None
        meta, promotion = trained.metadata, trained.metadata.promotion
        self.metrics.events_in_window.set(meta.training["events"])
        self.metrics.candidate_quality.set(promotion["candidate"])
        if promotion["serving"] is not None:
            self.metrics.serving_quality.set(promotion["serving"])
        if not trained.promoted:
            self.metrics.rounds.labels("rejected").inc()
            self.metrics.round_duration.observe(time.perf_counter() - started)
            return trained.path
        announce(
            self.producer(),
            self.settings,
            meta,
            trained.path,
            events_trained=meta.training["events"],
            window=(meta.training["window_start_ms"], meta.training["window_end_ms"]),
            metrics=meta.metrics,
        )
        self.metrics.rounds.labels("promoted").inc()
        self.metrics.model_version.set(meta.version)
        self.metrics.last_success.set(time.time())
        self.metrics.round_duration.observe(time.perf_counter() - started)
        return trained.path
