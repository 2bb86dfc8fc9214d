"""The model-updates topic: the trainer announces checkpoints; workers load and swap them.

A worker's `ModelWatcher` reads the topic on a background thread (starting from the newest
announcement, so a worker that starts late still picks up the current model), loads each
newer checkpoint onto the device off the hot path, and hands it over through `take()`,
which the main loop calls between batches.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from models import checkpoint
from models.checkpoint import CheckpointMetadata, LoadedModel
from stream_worker.codec import MODEL_UPDATE, DecodeError, make_codec
from stream_worker.config import Settings
from stream_worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def announce(
    producer: Producer,
    settings: Settings,
    meta: CheckpointMetadata,
    path: Path,
    *,
    events_trained: int,
    window: tuple[int, int] | None,
    metrics: dict[str, float],
    action: str = "promote",
) -> None:
    """Publish a ModelUpdate for the checkpoint at `path` and wait for the broker's ack.

    `action` is "promote" (workers move up to this version) or "rollback" (workers move back
    to it, although it is older than what they serve)."""
    codec = make_codec(MODEL_UPDATE, settings.model_updates_topic, settings.schema_registry_url)
    value = codec.encode(
        {
            "model_name": meta.name,
            "model_kind": meta.kind,
            "version": meta.version,
            "checkpoint_uri": str(Path(path).resolve()),
            "created_at": meta.created_at_ms,
            "window_start": window[0] if window else None,
            "window_end": window[1] if window else None,
            "events_trained": events_trained,
            "metrics": metrics,
            "weights_sha256": checkpoint.weights_sha256(path),
            "action": action,
        }
    )
    errors: list[Any] = []
    producer.produce(
        settings.model_updates_topic, value, meta.name.encode(), on_delivery=lambda err, _m: errors.append(err)
    )
    producer.flush(30)
    if errors != [None]:
        raise RuntimeError(f"announcing model version {meta.version} failed: {errors or 'no acknowledgement'}")


class ModelWatcher:
    def __init__(
        self, settings: Settings, *, model_name: str, current_version: int, device: Any, metrics: WorkerMetrics
    ) -> None:
        self._settings = settings
        self._model_name = model_name
        self._newest_version = current_version
        self._device = device
        self._metrics = metrics
        self._codec = make_codec(MODEL_UPDATE, settings.model_updates_topic, settings.schema_registry_url)
        self._pending: LoadedModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def take(self) -> LoadedModel | None:
        """The newest loaded model not yet handed over, if any."""
        with self._lock:
            loaded, self._pending = self._pending, None
            return loaded

    def _run(self) -> None:
        consumer = Consumer(
            {
                **self._settings.kafka_common(),
                # A group id is required by librdkafka even for assign(); nothing is ever committed.
                "group.id": f"{self._settings.group_id}.model-watcher",
                "enable.auto.commit": False,
            }
        )
        try:
            self._assign_from_newest(consumer)
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                self._consider(msg.value())
        except Exception:
            log.exception("model watcher stopped; the current model keeps serving")
        finally:
            consumer.close()

    def _assign_from_newest(self, consumer: Consumer) -> None:
        topic = self._settings.model_updates_topic
        while not self._stop.is_set():
            metadata = consumer.list_topics(topic, timeout=10)
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
        try:
            update = self._codec.decode(value or b"")
        except DecodeError as exc:
            log.warning("ignoring an undecodable model update: %s", exc)
            return
        rollback = update.get("action") == "rollback" and update["version"] != self._newest_version
        if update["model_name"] != self._model_name or (update["version"] <= self._newest_version and not rollback):
            return
        started = time.perf_counter()
        try:
            loaded = checkpoint.load(Path(update["checkpoint_uri"]), self._device)
        except Exception as exc:
            self._metrics.model_load_failures.inc()
            log.error("cannot load announced model %s v%s: %s", update["model_name"], update["version"], exc)
            return
        log.info(
            "loaded %s v%d from %s in %.2fs",
            update["model_name"],
            update["version"],
            update["checkpoint_uri"],
            time.perf_counter() - started,
        )
        self._newest_version = update["version"]
        with self._lock:
            self._pending = loaded
