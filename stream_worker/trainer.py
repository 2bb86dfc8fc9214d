"""The periodic trainer: event log -> interaction matrix -> train -> evaluate -> checkpoint -> announce.

Each round reads the events whose Kafka timestamps fall in the last `trainer_window_s`
(up to the end offsets seen when the round starts, so a round always finishes), builds the
user x item matrix with the same per-event weights the worker's state uses, trains a model
of `trainer_model_kind`, evaluates it and the model it would replace on the same held-out
users, writes the next checkpoint version and announces it on the model-updates topic.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from models import checkpoint
from models.checkpoint import CheckpointError
from models.evaluate import holdout_metrics
from models.splits import split_users_holdout
from models.train import train_model
from stream_worker import metrics as metrics_module
from stream_worker.codec import USER_EVENT, DecodeError, InvalidEvent, make_codec, to_user_event
from stream_worker.config import Settings
from stream_worker.model_updates import announce
from stream_worker.publish import producer_config
from stream_worker.state import interaction_weight

log = logging.getLogger(__name__)

HOLDOUT_USERS = 0.1  # share of users held out to compare the new model with the serving one
EVAL_K = 20


@dataclass
class EventWindow:
    """Events of one training window, as parallel columns (one entry per event)."""

    user_ids: np.ndarray  # (n,) object (str)
    item_ids: np.ndarray  # (n,) object (str)
    weights: np.ndarray  # (n,) float32
    start_ms: int
    end_ms: int
    skipped: int  # records that did not decode or validate (the worker dead-letters them)

    def __len__(self) -> int:
        return len(self.user_ids)


def read_window(settings: Settings, *, since_ms: int, timeout_s: float = 600.0) -> EventWindow:
    """Every event on the events topic with a Kafka timestamp >= since_ms, up to the current end."""
    topic = settings.events_topic
    codec = make_codec(USER_EVENT, topic, settings.schema_registry_url)
    consumer = Consumer(
        {**settings.kafka_common(), "group.id": f"{settings.group_id}.trainer", "enable.auto.commit": False}
    )
    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in partitions], timeout=10)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        # offset -1 = no record at or after since_ms in that partition: nothing to read there.
        todo = {tp.partition: tp.offset for tp in starts if 0 <= tp.offset < ends[tp.partition]}
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in todo.items()])

        users, items, weights, times, skipped = [], [], [], [], 0
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error():
                    continue
                if msg.offset() + 1 >= ends[msg.partition()]:
                    todo.pop(msg.partition(), None)
                try:
                    event = to_user_event(codec.decode(msg.value() or b""), msg.key())
                except (DecodeError, InvalidEvent):
                    skipped += 1
                    continue
                users.append(event.user_id)
                items.append(event.item_id)
                weights.append(interaction_weight(settings.event_weights, event.event_type, event.value))
                times.append(event.event_time_ms)
        if todo:
            raise TimeoutError(f"reading the training window did not reach the end offsets within {timeout_s}s")
    finally:
        consumer.close()
    return EventWindow(
        user_ids=np.array(users, dtype=object),
        item_ids=np.array(items, dtype=object),
        weights=np.array(weights, dtype=np.float32),
        start_ms=min(times, default=0),
        end_ms=max(times, default=0),
        skipped=skipped,
    )


def interaction_matrix(window: EventWindow) -> tuple[sp.csr_matrix, list[str]]:
    """(n_users, n_items) summed weights, and the item ids of its columns."""
    item_ids, cols = np.unique(window.item_ids, return_inverse=True)
    _, rows = np.unique(window.user_ids, return_inverse=True)
    X = sp.csr_matrix((window.weights, (rows, cols)), shape=(rows.max() + 1, len(item_ids)), dtype=np.float32)
    X.sum_duplicates()
    return X, [str(i) for i in item_ids]


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


class Trainer:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        if settings.model_dir is None:
            raise ValueError("the trainer needs a model directory: pass --model-dir DIR or set STREAMREC_MODEL_DIR")
        self.settings = settings
        self.model_dir = Path(settings.model_dir)
        if settings.trainer_torch_threads:
            torch.set_num_threads(settings.trainer_torch_threads)
        self.metrics = metrics_module.TrainerMetrics(registry or CollectorRegistry())
        self.metrics.build_info.info(metrics_module.build_labels(settings.trainer_model_kind))  # issue 9
        self.stop = threading.Event()
        self.producer = Producer(producer_config(settings.kafka_common()))  # announces each round

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
        try:
            while not self.stop.is_set():
                try:
                    self.round()
                except Exception:
                    self.metrics.rounds.labels("failed").inc()
                    log.exception("training round failed; the serving model stays")
                    if once:
                        raise
                if once:
                    return
                self.stop.wait(self.settings.trainer_interval_s)
        finally:
            if server is not None:
                server.shutdown()

    def round(self) -> Path | None:
        """One training round; returns the new checkpoint folder, or None if skipped."""
        started = time.perf_counter()
        trained = train_from_topic(self.settings, self.model_dir)
        if trained is None:
            self.metrics.rounds.labels("skipped").inc()
            return None
        announce(
            self.producer,
            self.settings,
            trained.metadata,
            trained.path,
            events_trained=trained.metadata.training["events"],
            window=(trained.metadata.training["window_start_ms"], trained.metadata.training["window_end_ms"]),
            metrics=trained.metadata.metrics,
        )
        self.metrics.events_in_window.set(trained.metadata.training["events"])
        self.metrics.rounds.labels("published").inc()
        self.metrics.model_version.set(trained.metadata.version)
        self.metrics.last_success.set(time.time())
        self.metrics.round_duration.observe(time.perf_counter() - started)
        return trained.path


@dataclass
class Trained:
    path: Path
    metadata: checkpoint.CheckpointMetadata


def train_from_topic(settings: Settings, model_dir: Path) -> Trained | None:
    """Read the window, train, evaluate against the serving model, save the next version.

    Returns None (and saves nothing) when the window holds fewer than trainer_min_events.
    """
    s = settings
    window = read_window(s, since_ms=int((time.time() - s.trainer_window_s) * 1000))
    if len(window) < s.trainer_min_events:
        log.info("skipping: %d events in the window, fewer than %d", len(window), s.trainer_min_events)
        return None

    X, item_ids = interaction_matrix(window)
    train, fold_in, held_out = split_users_holdout(X, HOLDOUT_USERS, seed=0)
    model, report = train_model(s.trainer_model_kind, train, epochs=s.trainer_epochs)
    metrics = holdout_metrics(model, fold_in, held_out, k=EVAL_K)
    metrics.update(_serving_metrics(model_dir, fold_in, held_out, item_ids))
    metrics["train_seconds"] = report.seconds

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
            "skipped_records": window.skipped,
        },
    )
    saved = checkpoint.read_metadata(path)
    log.info(
        "saved %s v%d (%d events, %d users, %d items): %s",
        saved.name,
        saved.version,
        len(window),
        X.shape[0],
        len(item_ids),
        ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
    )
    return Trained(path=path, metadata=saved)


def _serving_metrics(
    model_dir: Path, fold_in: sp.csr_matrix, held_out: sp.csr_matrix, item_ids: list[str]
) -> dict[str, float]:
    """The current newest checkpoint on the same held-out users, as `serving_<metric>`.

    Items the serving model does not know are dropped from its fold-in and held-out sets,
    which flatters it a little when the catalog grew; the comparison stays conservative.
    """
    try:
        serving = checkpoint.load(model_dir)
    except CheckpointError:
        return {}
    serving_ids = serving.metadata.item_ids
    scores = holdout_metrics(
        serving.model,
        reindex_columns(fold_in, item_ids, serving_ids),
        reindex_columns(held_out, item_ids, serving_ids),
        k=EVAL_K,
    )
    return {f"serving_{k}": v for k, v in scores.items()}
