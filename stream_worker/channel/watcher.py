"""The worker side of the model channel: watch model-updates, verify and load off the hot path.

A worker's `ModelWatcher` reads the topic on a background thread (starting from the newest
announcement, so a worker that starts late still picks up the current model). Anyone who can
write to the topic can announce, so an an announcement is only a hint, accepted only once `verify.verify` passes.

ification and loading run on a thread of their own with a timeout, and the weights are
read by Python (which releases the GIL while it waits) and handed to safetensors as bytes, so
a FIFO or a hung mount cannot freeze the worker. The verified model is handed over through
`take()`, which the main loop calls between batches. The watcher retries forever on broker
errors; `alive()` feeds readiness and the `model_watcher_alive` gauge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from models.checkpoint import CheckpointMetadata, LoadedModel
from stream_worker.channel.verify import Limits, Rejected, checkpoint_root, fetched_from_kafka, verify
from stream_worker.codec import MODEL_UPDATE, DecodeError, make_codec
from stream_worker.config import Settings
from stream_worker.kafka.clients import ThrottledLog, new_reader
from stream_worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


HEARTBEAT_LIMIT_S = 30.0  # a watcher that has not turned for this long is not alive


RETRY_S = 5.0


class ModelWatcher:
    def __init__(
        self,
        settings: Settings,
        *,
        serving: CheckpointMetadata,
        serving_path: Path,
        device: Any,
        metrics: WorkerMetrics,
        seen_items: Callable[[], list[str]] = list,
    ) -> None:
        self._settings = settings
        self._limits = Limits(
            root=checkpoint_root(settings.model_dir or serving_path),
            max_weights_bytes=settings.model_max_bytes,
            min_item_overlap=settings.model_min_item_overlap,
            max_version_jump=settings.model_max_version_jump,
        )
        self._newest = {serving.name: serving.version}
        self._serving = (serving.name, serving.version)
        self._device = device
        self._metrics = metrics
        self._seen_items = seen_items
        self._codec = make_codec(MODEL_UPDATE, settings.model_updates_topic, settings.schema_registry_url)
        self._pending: LoadedModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def alive(self) -> bool:
        return self._thread.is_alive() and time.monotonic() - self._heartbeat < HEARTBEAT_LIMIT_S

    def take(self) -> LoadedModel | None:
        """The newest verified model not yet handed over, if any."""
        with self._lock:
            loaded, self._pending = self._pending, None
            return loaded

    def _run(self) -> None:
        """Read announcements until stopped; on any broker error start over after a pause."""
        throttled = ThrottledLog(log)
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = new_reader(self._settings, f"{self._settings.group_id}.model-watcher")
                self._assign_from_newest(consumer)
                while not self._stop.is_set():
                    self._heartbeat = time.monotonic()
                    msg = consumer.poll(0.5)
                    self._metrics.watcher_last_poll.set_to_current_time()
                    if msg is not None and not msg.error():
                        self._consider(msg.value())
            except Exception as exc:  # KafkaException while the broker is away, mostly
                throttled.warning("watcher", "model watcher: %s; retrying every %.0fs", exc, RETRY_S)
                self._stop.wait(RETRY_S)
            finally:
                if consumer is not None:
                    consumer.close()

    def _assign_from_newest(self, consumer: Consumer) -> None:
        topic = self._settings.model_updates_topic
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            metadata = consumer.list_topics(topic, timeout=10)  # raises while the broker is away
            partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
            if partitions and metadata.topics[topic].error is None:
                break
            self._stop.wait(2.0)  # topic not created yet: look again
        else:
            return
        assignment = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            start = max(high - 1, low) if high > low else OFFSET_BEGINNING
            assignment.append(TopicPartition(topic, p, start))
        consumer.assign(assignment)

    def _consider(self, value: bytes | None) -> None:
        started = time.perf_counter()
        try:
            update = self._codec.decode(value or b"")
        except DecodeError as exc:
            self._reject(Rejected("decode", f"not a ModelUpdate: {exc}"))
            return
        name, version = update["model_name"], update["version"]
        try:
            loaded = self._verify_in_time(update)
        except Rejected as exc:
            self._reject(exc, f"{name} v{version}")
            return
        log.info("verified and loaded %s v%d in %.2fs", name, version, time.perf_counter() - started)
        self._newest[name] = version
        self._serving = (name, version)
        with self._lock:
            self._pending = loaded

    def _verify_in_time(self, update: dict[str, Any]) -> LoadedModel:
        """`verify` on a thread of its own, abandoned after model_load_timeout_s (a blocked read
        cannot be interrupted; the daemon thread is left to the OS)."""
        outcome: list[LoadedModel | BaseException] = []
        seen = self._seen_items()
        args = (update, self._limits, dict(self._newest), self._serving, seen, self._device)

        def run() -> None:
            try:
                # A kafka:// checkpoint is fetched into the local cache first (checkpoint_topic.py).
                fetched, limits = fetched_from_kafka(self._settings, update, self._limits, args[2])
                outcome.append(verify(fetched, limits, *args[2:]))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run, name="model-verify", daemon=True)
        thread.start()
        deadline = time.monotonic() + self._settings.model_load_timeout_s
        while thread.is_alive() and time.monotonic() < deadline and not self._stop.is_set():
            self._heartbeat = time.monotonic()
            thread.join(timeout=0.5)
        if not outcome:
            raise Rejected(
                "timeout", f"verifying and loading took longer than {self._settings.model_load_timeout_s:.0f}s"
            )
        if isinstance(outcome[0], BaseException):
            if isinstance(outcome[0], Rejected):
                raise outcome[0]
            raise Rejected("load", f"{type(outcome[0]).__name__}: {outcome[0]}")
        return outcome[0]

    def _reject(self, exc: Rejected, what: str = "an announcement") -> None:
        self._metrics.model_updates_rejected.labels(exc.reason).inc()
        if exc.reason in ("file", "load", "timeout"):  # it claimed to be a model and could not be read as one
            self._metrics.model_load_failures.inc()
        log.warning("rejected %s (%s): %s; the current model keeps serving", what, exc.reason, exc)
