"""The model-updates topic: the trainer announces checkpoints; workers verify, load and swap them.

A worker's `ModelWatcher` reads the topic on a background thread (starting from the newest
announcement, so a worker that starts late still picks up the current model). Anyone who can
write to the topic can announce, so an announcement is only a hint: the watcher accepts it
only when (`verify`)

  * the checkpoint resolves, after following links, inside the worker's model directory;
  * its two files are regular files, the weights no larger than `model_max_bytes`;
  * metadata.json agrees with the announcement (name, kind, version);
  * the weights' SHA-256 equals the announced `weights_sha256`;
  * the version is newer than the newest known for that name and not absurdly so (a rollback
    announcement may go back to an older version);
  * the model knows enough of the items the stream has shown (`model_min_item_overlap`).

Verification and loading run on a thread of their own with a timeout, and the weights are
read by Python (which releases the GIL while it waits) and handed to safetensors as bytes, so
a FIFO or a hung mount cannot freeze the worker. The verified model is handed over through
`take()`, which the main loop calls between batches. The watcher retries forever on broker
errors; `alive()` feeds readiness and the `model_watcher_alive` gauge.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from models import checkpoint
from models.checkpoint import CheckpointError, CheckpointMetadata, LoadedModel
from stream_worker.channel.checkpoint_topic import (
    SCHEME,
    CheckpointIntegrityError,
    CheckpointTransferError,
    local_checkpoint,
    parse_uri,
    publish_checkpoint,
)
from stream_worker.codec import MODEL_UPDATE, DecodeError, make_codec
from stream_worker.config import Settings
from stream_worker.kafka.clients import ThrottledLog, new_reader
from stream_worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

METADATA_MAX_BYTES = 256 * 1024**2  # an item vocabulary of millions of ids still fits
MIN_ITEMS_FOR_OVERLAP = 100  # below this many seen items the overlap says nothing yet
HEARTBEAT_LIMIT_S = 30.0  # a watcher that has not turned for this long is not alive
RETRY_S = 5.0


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
    uri = str(Path(path).resolve())
    if settings.checkpoint_store == "kafka":  # checkpoints through Kafka (i9k): workers in any pod can fetch it
        uri = publish_checkpoint(settings, path)
    value = codec.encode(
        {
            "model_name": meta.name,
            "model_kind": meta.kind,
            "version": meta.version,
            "checkpoint_uri": uri,
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


class Rejected(Exception):
    """An announcement the worker will not serve; `reason` is a label of model_updates_rejected_total."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    root: Path  # checkpoints must resolve inside this folder
    max_weights_bytes: int
    min_item_overlap: float
    max_version_jump: int


def checkpoint_root(model_dir: Path) -> Path:
    """The folder announced checkpoints must live in: the model directory, or the parent of a
    single checkpoint folder given as --model."""
    model_dir = Path(model_dir)
    return (model_dir.parent if (model_dir / checkpoint.METADATA_FILE).is_file() else model_dir).resolve()


def checkpoint_path(uri: str) -> Path:
    """A plain path or a file:// URI as a path; other schemes are rejected."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise Rejected("location", f"file URI {uri!r} names another host")
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # (a one-letter scheme is a Windows drive)
        raise Rejected("location", f"checkpoint URI scheme {parsed.scheme!r} is not supported (a path or file://)")
    return Path(uri)


def verify(
    update: dict[str, Any],
    limits: Limits,
    newest: dict[str, int],
    serving: tuple[str, int],
    seen_items: list[str],
    device: Any,
) -> LoadedModel:
    """The announced checkpoint, loaded, if it passes every check in the module docstring; else Rejected.

    `newest`: the newest version known per model name; `serving`: (name, version) served now."""
    name, version = update["model_name"], update["version"]
    if update.get("action") == "rollback":
        if (name, version) == serving:
            raise Rejected("version", f"rollback to {name} v{version}, which is already serving")
    else:
        known = newest.get(name, 0)
        if version <= known:
            raise Rejected("version", f"{name} v{version} is not newer than v{known}")
        ceiling = max(newest.values(), default=0) + limits.max_version_jump
        if version > ceiling:
            raise Rejected("version", f"{name} v{version} jumps beyond v{ceiling} (model_max_version_jump)")

    folder = Path(os.path.realpath(checkpoint_path(update["checkpoint_uri"])))
    if not folder.is_relative_to(limits.root):
        raise Rejected("location", f"checkpoint {folder} is outside the model directory {limits.root}")
    weights_file = _regular_file(folder / checkpoint.WEIGHTS_FILE, limits.root, limits.max_weights_bytes)
    metadata_file = _regular_file(folder / checkpoint.METADATA_FILE, limits.root, METADATA_MAX_BYTES)

    try:
        metadata = checkpoint.read_metadata(metadata_file.parent)
    except CheckpointError as exc:
        raise Rejected("metadata", str(exc)) from None
    claimed = (update["model_name"], update["model_kind"], update["version"])
    if (metadata.name, metadata.kind, metadata.version) != claimed:
        raise Rejected(
            "metadata",
            f"{metadata_file} says {metadata.name}/{metadata.kind} v{metadata.version}, "
            f"the announcement {claimed[0]}/{claimed[1]} v{claimed[2]}",
        )

    expected = update.get("weights_sha256")
    if not expected:
        raise Rejected("hash", "the announcement carries no weights_sha256")
    weights = weights_file.read_bytes()
    actual = hashlib.sha256(weights).hexdigest()
    if actual != expected.lower():
        raise Rejected("hash", f"{weights_file} has SHA-256 {actual}, the announcement {expected}")

    if len(seen_items) >= MIN_ITEMS_FOR_OVERLAP:
        vocabulary = set(metadata.item_ids)
        overlap = sum(item in vocabulary for item in seen_items) / len(seen_items)
        if overlap < limits.min_item_overlap:
            raise Rejected(
                "vocabulary",
                f"{name} v{version} knows {overlap:.0%} of the {len(seen_items)} items seen in the stream "
                f"(model_min_item_overlap is {limits.min_item_overlap:.0%})",
            )
    try:
        return checkpoint.load_bytes(folder, metadata, weights, device)
    except Exception as exc:  # safetensors or a shape mismatch: the file is not what it claims
        raise Rejected("load", f"{weights_file} does not load: {type(exc).__name__}: {exc}") from None


def fetched_from_kafka(
    settings: Settings, update: dict[str, Any], limits: Limits, newest: dict[str, int]
) -> tuple[dict[str, Any], Limits]:
    """Checkpoints through Kafka (channel/checkpoint_topic.py): a kafka:// checkpoint is
    fetched into the local cache with its sizes and hashes checked against the manifest and the
    announcement; `verify` then checks it like any folder, the cache being where it must resolve.
    Other URIs pass unchanged, and so do announcements `verify` refuses for their version alone
    (nothing is downloaded for them)."""
    stale = update.get("action") != "rollback" and update["version"] <= newest.get(update["model_name"], 0)
    if not update["checkpoint_uri"].startswith(SCHEME) or stale:
        return update, limits
    try:
        parse_uri(settings, update["checkpoint_uri"])  # only on this deployment's checkpoints topic
    except CheckpointTransferError as exc:
        raise Rejected("location", str(exc)) from None
    try:
        folder = local_checkpoint(
            settings, update["checkpoint_uri"], expected_weights_sha256=update.get("weights_sha256")
        )
    except CheckpointIntegrityError as exc:
        raise Rejected("hash", str(exc)) from None
    except CheckpointTransferError as exc:
        raise Rejected("file", str(exc)) from None
    return {**update, "checkpoint_uri": str(folder)}, replace(limits, root=folder.parent.resolve())


def _regular_file(path: Path, root: Path, max_bytes: int) -> Path:
    """`path` after following links, if it is a regular file inside `root` of at most `max_bytes`."""
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root):
        raise Rejected("location", f"{path} links outside the model directory {root}")
    try:
        info = os.stat(real)
    except OSError as exc:
        raise Rejected("file", f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise Rejected("file", f"{path} is not a regular file")
    if info.st_size > max_bytes:
        raise Rejected("file", f"{path} has {info.st_size} bytes, more than the limit of {max_bytes}")
    return real


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
                # i9k: a kafka:// checkpoint is fetched into the local cache first (checkpoint_topic.py).
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
