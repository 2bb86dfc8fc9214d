"""The periodic trainer: event log -> arrays -> candidate -> honest comparison -> promote or reject.

Each round (`round.train_from_topic`): read the window (`window`), cut it in time (`split`), train
a candidate (`fit`), score it against the serving model and decide (`compare`); a promoted
candidate is announced on the model-updates topic. A failed round is tried again sooner, backing
off up to the interval (`next_round_in`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from models.base import Recommender
from stream_worker import metrics as metrics_module
from stream_worker.channel.announce import announce
from stream_worker.config import Settings
from stream_worker.kafka.clients import new_producer
from stream_worker.trainer.round import train_from_topic

log = logging.getLogger(__name__)


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
