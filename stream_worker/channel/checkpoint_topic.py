"""Checkpoints through Kafka: a checkpoint folder as chunked records on a compacted topic.

So that a worker in any pod can load what the trainer wrote, with no shared volume or object
store. The topic (`checkpoints_topic`, default `model-checkpoints`) has two partitions with
fixed roles, so that finding a checkpoint never means reading through weights:

    partition 0  manifests  key <name>/v000003/manifest        JSON: each file's size, SHA-256 and
                                                                chunk count, and the chunks' offsets
    partition 1  chunks     key <name>/v000003/weights/00017   up to CHUNK_BYTES of the file

Every key names one chunk of one version, so compaction never removes a record of a live
checkpoint; versions beyond the newest `checkpoints_keep` of a name are deleted by tombstoning
their keys when a new one is published. A manifest is written only after every chunk of it was
acknowledged, so a reader that finds a manifest finds all its chunks. Chunks stay well under the
broker's default message.max.bytes (~1 MB), so no broker or topic limit has to be raised.

    uri = publish_checkpoint(settings, Path("runs/models/v000003"))  # kafka://model-checkpoints/multvae/v000003
    folder = fetch_checkpoint(settings, uri, Path("/cache"), expected_weights_sha256=sha, timeout_s=300)

Fetching assembles the files in a staging folder inside the destination, checks every size and
SHA-256 (the weights' also against the announcement's), and renames the folder into place, so a
reader never sees half a checkpoint.

Longer than 400 lines because publishing and fetching share one framing (chunk keys, manifest,
hashes) that must stay in one place to stay in agreement.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from models import checkpoint
from models.checkpoint import METADATA_FILE, WEIGHTS_FILE
from stream_worker.config import Settings
from stream_worker.kafka.clients import new_producer, new_reader, position

log = logging.getLogger(__name__)

SCHEME = "kafka://"
CHUNK_BYTES = 512 * 1024  # half the broker's default message.max.bytes: room for the record's overhead
MANIFESTS_PARTITION = 0
CHUNKS_PARTITION = 1
# Segments roll at 64 MiB (not the default 1 GiB), so tombstoned versions are compacted away soon.
FILES = {"weights": WEIGHTS_FILE, "metadata": METADATA_FILE}  # key part -> file in the checkpoint folder
MANIFEST_FORMAT = 1
_URI = re.compile(r"^kafka://(?P<topic>[^/]+)/(?P<name>[^/]+)/v(?P<version>\d{6,})$")
_CHUNK_KEY = re.compile(r"^(?P<part>[a-z]+)/(?P<index>\d{5,})$")


class CheckpointTransferError(Exception):
    """A checkpoint could not be published to or fetched from the checkpoints topic."""


class CheckpointNotFound(CheckpointTransferError):
    """No manifest for that checkpoint on the topic (never published, or deleted as too old)."""


class CheckpointIntegrityError(CheckpointTransferError):
    """A chunk is missing, or a file's size or SHA-256 is not what the manifest or announcement says."""


class CheckpointFetchTimeout(CheckpointTransferError):
    """The chunks did not all arrive within the time allowed."""


def checkpoint_uri(topic: str, name: str, version: int) -> str:
    return f"{SCHEME}{topic}/{name}/v{version:06d}"


def parse_uri(settings: Settings, uri: str) -> tuple[str, int]:
    """(name, version) of a kafka:// checkpoint URI on this deployment's checkpoints topic."""
    match = _URI.match(uri)
    if match is None:
        raise CheckpointTransferError(f"{uri!r} is not a checkpoint URI like {checkpoint_uri('TOPIC', 'NAME', 1)}")
    if match["topic"] != settings.checkpoints_topic:
        # Checkpoints resolve inside this deployment's store only, never on a topic an announcement picks.
        raise CheckpointTransferError(
            f"{uri} names the topic {match['topic']!r}, not the checkpoints topic {settings.checkpoints_topic!r} "
            "(STREAMREC_CHECKPOINTS_TOPIC)"
        )
    return match["name"], int(match["version"])


# --- publishing ------------------------------------------------------------------------------


def publish_checkpoint(settings: Settings, folder: Path, *, timeout_s: float = 300.0) -> str:
    """Publish a checkpoint folder (weights + metadata) as chunks and a manifest; return its kafka:// URI.

    Waits for the broker's acknowledgement of every record (idempotent producer, acks=all), then
    tombstones this name's versions beyond the newest `checkpoints_keep`. A version already on the
    topic with the same files is not published again; with other files it is refused."""
    folder = Path(folder)
    meta = checkpoint.read_metadata(folder)
    if not meta.name or "/" in meta.name:
        raise CheckpointTransferError(f"model name {meta.name!r} cannot be a key part: it must be non-empty, no '/'")
    topic, prefix = settings.checkpoints_topic, _prefix(meta.name, meta.version)
    producer = new_producer(
        settings,
        # idempotent (acks=all): a retried chunk is never written twice or out of order; float32
        # weights do not compress; give up after librdkafka's default 5 minutes, not never.
        **{"compression.type": "none", "linger.ms": 5, "message.timeout.ms": 300_000},
    )
    _require_topic(producer, topic)
    deadline = time.monotonic() + timeout_s
    uri = checkpoint_uri(topic, meta.name, meta.version)
    there = read_manifests(settings, timeout_s=timeout_s).get(f"{prefix}/manifest")
    if there is not None:
        if all(_sha256(folder / FILES[p]) == there["files"][p]["sha256"] for p in FILES):
            log.info("%s is already on the topic with the same files; not published again", uri)
            return uri  # e.g. a rollback announcing a version that is still there
        # As in models.checkpoint.save: a version once published is never overwritten, so a worker
        # never holds two different models under one name and version.
        raise CheckpointTransferError(
            f"{uri} is already published with other files; versions are never overwritten (a trainer "
            "without its model directory can restore it first: `streamrec checkpoints fetch --name NAME`)"
        )

    chunks = _Deliveries()
    files: dict[str, dict[str, Any]] = {}
    for part, filename in FILES.items():
        digest, size, count = hashlib.sha256(), 0, 0
        with open(folder / filename, "rb") as source:
            for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
                _produce(producer, topic, CHUNKS_PARTITION, f"{prefix}/{part}/{count:05d}", chunk, chunks.report)
                digest.update(chunk)
                size += len(chunk)
                count += 1
        files[part] = {"file": filename, "size": size, "chunks": count, "sha256": digest.hexdigest()}
    # Step 1. every chunk acknowledged, before any manifest points at them.
    chunks.wait(producer, deadline, what=f"the chunks of {prefix}")
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": meta.name,
        "version": meta.version,
        "chunk_bytes": CHUNK_BYTES,
        "files": files,
        "first_offset": min(chunks.offsets),
        "last_offset": max(chunks.offsets),
    }
    # Step 2. the manifest: from now on readers can find this checkpoint.
    written = _Deliveries()
    _produce(producer, topic, MANIFESTS_PARTITION, f"{prefix}/manifest", json.dumps(manifest).encode(), written.report)
    written.wait(producer, deadline, what=f"the manifest of {prefix}")
    # Step 3. delete versions beyond the newest `checkpoints_keep` (their records become tombstones).
    _delete_old_versions(settings, producer, meta.name, published=meta.version, deadline=deadline)
    log.info("published %s: %d chunks, %d bytes", uri, len(chunks.offsets), sum(f["size"] for f in files.values()))
    return uri


def _delete_old_versions(settings: Settings, producer: Producer, name: str, *, published: int, deadline: float) -> None:
    manifests = read_manifests(settings, timeout_s=max(deadline - time.monotonic(), 1.0))
    versions = sorted({m["version"] for m in manifests.values() if m["name"] == name} | {published}, reverse=True)
    # The version just published always stays, even when it is older (a rollback to a deleted version).
    beyond = versions[settings.checkpoints_keep :]
    doomed = [v for v in beyond if v != published and f"{_prefix(name, v)}/manifest" in manifests]
    if not doomed:
        return
    tombstones = _Deliveries()
    topic = settings.checkpoints_topic
    for version in doomed:
        prefix = _prefix(name, version)
        # Manifests first: a reader starting now finds no manifest whose chunks are going (one that
        # already read the manifest gets a clear missing-chunk error).
        _produce(producer, topic, MANIFESTS_PARTITION, f"{prefix}/manifest", None, tombstones.report)
        for part, spec in manifests[f"{prefix}/manifest"]["files"].items():
            for index in range(spec["chunks"]):
                _produce(producer, topic, CHUNKS_PARTITION, f"{prefix}/{part}/{index:05d}", None, tombstones.report)
    tombstones.wait(producer, deadline, what=f"deleting {name} versions {doomed}")
    log.info("deleted %s versions %s from %s (keeping the newest %d)", name, doomed, topic, settings.checkpoints_keep)


# --- fetching --------------------------------------------------------------------------------


def fetch_checkpoint(
    settings: Settings, uri: str, dest_dir: Path, *, expected_weights_sha256: str | None, timeout_s: float
) -> Path:
    """Fetch the checkpoint `uri` into `dest_dir/<name>/v<version>/` and return that folder.

    Every size and SHA-256 is checked against the manifest, and the weights' hash also against
    `expected_weights_sha256` (the announcement's) when given. A complete, matching copy already
    there is returned as it is. Raises a CheckpointTransferError subclass on any mismatch or timeout."""
    name, version = parse_uri(settings, uri)
    deadline = time.monotonic() + timeout_s
    prefix = _prefix(name, version)
    manifest = read_manifests(settings, timeout_s=timeout_s).get(f"{prefix}/manifest")
    if manifest is None:
        raise CheckpointNotFound(
            f"{uri} is not on the topic {settings.checkpoints_topic}: no manifest {prefix}/manifest "
            f"(not published, or deleted as older than the newest {settings.checkpoints_keep} versions)"
        )
    weights_sha = manifest["files"]["weights"]["sha256"]
    if expected_weights_sha256 is not None and weights_sha != expected_weights_sha256.lower():
        raise CheckpointIntegrityError(
            f"{uri}: the published weights have SHA-256 {weights_sha}, the announcement says {expected_weights_sha256}"
        )
    target = Path(dest_dir) / name / f"v{version:06d}"
    if _matches(target, manifest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _download(settings, manifest, prefix, staging, deadline)
        meta = checkpoint.read_metadata(staging)
        if (meta.name, meta.version) != (name, version):
            raise CheckpointIntegrityError(f"{uri}: its metadata.json names {meta.name} v{meta.version}")
        if target.exists():  # an incomplete or different earlier copy
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_manifests(settings: Settings, *, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Every live manifest on the checkpoints topic, by key (the newest value of each key)."""
    manifests: dict[str, dict[str, Any]] = {}
    for msg in _read(settings, MANIFESTS_PARTITION, OFFSET_BEGINNING, None, time.monotonic() + timeout_s):
        key = (msg.key() or b"").decode(errors="replace")
        if (value := msg.value()) is None:
            manifests.pop(key, None)
            continue
        try:
            manifest = json.loads(value)
            if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"not a format {MANIFEST_FORMAT} manifest")
        except ValueError as exc:
            log.warning("ignoring an unreadable manifest %s at offset %d: %s", key, msg.offset(), exc)
            continue
        manifests[key] = manifest
    return manifests


def newest_uri(settings: Settings, name: str, *, timeout_s: float = 30.0) -> str | None:
    """The URI of the newest version of `name` on the checkpoints topic, or None if there is none."""
    versions = [m["version"] for m in read_manifests(settings, timeout_s=timeout_s).values() if m["name"] == name]
    return checkpoint_uri(settings.checkpoints_topic, name, max(versions)) if versions else None


def local_checkpoint(settings: Settings, uri: str, *, expected_weights_sha256: str | None) -> Path:
    """The folder to load for an announcement's checkpoint_uri: a kafka:// URI is fetched into the
    cache folder first (keeping the newest `checkpoints_keep` versions there); anything else is a path."""
    if not uri.startswith(SCHEME):
        return Path(uri)
    cache = settings.checkpoint_cache_dir or Path(tempfile.gettempdir()) / "streamrec-checkpoints"
    _, version = parse_uri(settings, uri)
    folder = fetch_checkpoint(
        settings,
        uri,
        cache,
        expected_weights_sha256=expected_weights_sha256,
        timeout_s=settings.checkpoint_fetch_timeout_s,
    )
    for old in checkpoint.versions(folder.parent)[: -settings.checkpoints_keep]:
        if old != version:  # a rollback fetches an older version: that one stays
            shutil.rmtree(checkpoint.version_dir(folder.parent, old), ignore_errors=True)
    return folder


def _download(settings: Settings, manifest: dict[str, Any], prefix: str, staging: Path, deadline: float) -> None:
    """Write the chunks between the manifest's offsets into `staging`, checking order, sizes and hashes."""
    files = manifest["files"]
    if set(files) != set(FILES):
        raise CheckpointIntegrityError(f"{prefix}: the manifest lists {sorted(files)}, expected {sorted(FILES)}")
    writers = {part: _FileWriter(staging / FILES[part]) for part in FILES}
    try:
        for msg in _read(settings, CHUNKS_PARTITION, manifest["first_offset"], manifest["last_offset"], deadline):
            key = (msg.key() or b"").decode(errors="replace")
            if not key.startswith(prefix + "/"):
                continue  # another checkpoint's records published at the same time
            match = _CHUNK_KEY.match(key[len(prefix) + 1 :])
            if match is None or match["part"] not in writers:
                raise CheckpointIntegrityError(f"unexpected record {key} at offset {msg.offset()}")
            part, index = match["part"], int(match["index"])
            writer = writers[part]
            if msg.value() is None or index != writer.chunks:
                raise CheckpointIntegrityError(
                    f"{prefix}: chunk {writer.chunks:05d} of {FILES[part]} is missing (found "
                    f"{'a tombstone for' if msg.value() is None else 'chunk'} {index:05d} at offset {msg.offset()})"
                )
            writer.write(msg.value() or b"")
    finally:
        for writer in writers.values():
            writer.close()
    for part, spec in files.items():
        writer = writers[part]
        got = (writer.chunks, writer.size, writer.digest.hexdigest())
        want = (spec["chunks"], spec["size"], spec["sha256"])
        if got != want:
            raise CheckpointIntegrityError(
                f"{prefix}: {FILES[part]} arrived as {got[0]} chunks, {got[1]} bytes, SHA-256 {got[2]}; "
                f"the manifest says {want[0]} chunks, {want[1]} bytes, SHA-256 {want[2]}"
            )


def _matches(folder: Path, manifest: dict[str, Any]) -> bool:
    """Whether `folder` already holds exactly the files the manifest describes."""
    for spec in manifest["files"].values():
        path = folder / spec["file"]
        if not path.is_file() or path.stat().st_size != spec["size"] or _sha256(path) != spec["sha256"]:
            return False
    return True


# --- Kafka plumbing --------------------------------------------------------------------------


def _prefix(name: str, version: int) -> str:
    return f"{name}/v{version:06d}"


def _require_topic(client: Producer, topic: str) -> None:
    metadata = client.list_topics(topic, timeout=30).topics.get(topic)
    if metadata is None or metadata.error is not None or len(metadata.partitions) < 2:
        found = "does not exist" if metadata is None or metadata.error else f"has {len(metadata.partitions)} partition"
        raise CheckpointTransferError(
            f"the checkpoints topic {topic} {found}; it needs 2 partitions and compaction: "
            "run `streamrec topics create`"
        )


def _produce(
    producer: Producer, topic: str, partition: int, key: str, value: bytes | None, on_delivery: Callable
) -> None:
    while True:
        try:
            producer.produce(topic, value, key.encode(), partition=partition, on_delivery=on_delivery)
            return
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(0.5)


class _Deliveries:
    """Delivery reports of a group of records: their offsets, and the first error if any."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.errors: list[KafkaError] = []

    def report(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)
        else:
            self.offsets.append(position(msg)[2])

    def wait(self, producer: Producer, deadline: float, *, what: str) -> None:
        remaining = producer.flush(max(deadline - time.monotonic(), 0.0))
        if self.errors or remaining:
            reason = self.errors[0].str() if self.errors else f"{remaining} records unacknowledged when time ran out"
            raise CheckpointTransferError(f"publishing {what} failed: {reason}")


def _read(settings: Settings, partition: int, start: int, last: int | None, deadline: float) -> Iterator[Message]:
    """Records of one partition of the checkpoints topic from `start` through offset `last` (None = the
    end offset seen now), in order; CheckpointFetchTimeout if they do not all arrive by `deadline`."""
    topic = settings.checkpoints_topic
    consumer = new_reader(
        settings,
        f"{settings.group_id}.checkpoints",
        **{
            "auto.offset.reset": "earliest",  # `start` already compacted away: the next record there is
            "queued.max.messages.kbytes": 32 * 1024,  # prefetch at most 32 MiB of chunks
        },
    )
    try:
        tp = TopicPartition(topic, partition)
        low, high = _watermarks(consumer, tp, deadline)
        end = high if last is None else last + 1
        if high < end and last is not None:
            raise CheckpointIntegrityError(f"{topic} partition {partition} ends at offset {high}, before {last}")
        if max(low, start) >= end:
            return
        consumer.assign([TopicPartition(topic, partition, start)])
        while True:
            if time.monotonic() > deadline:
                raise CheckpointFetchTimeout(f"reading {topic} partition {partition} up to offset {end} timed out")
            for msg in consumer.consume(100, timeout=0.5):
                if (error := msg.error()) is not None:
                    if error.fatal():
                        raise CheckpointTransferError(f"reading {topic} failed: {error.str()}")
                    continue
                offset = position(msg)[2]
                if offset < end:
                    yield msg
                if offset + 1 >= end:
                    return
            if consumer.position([tp])[0].offset >= end:  # the records before `end` were compacted away
                return
    finally:
        consumer.close()


# A partition whose leader the broker has not settled yet (the topic was just created, a broker is
# restarting) answers these for a moment; asked again, it answers.
_NOT_SETTLED = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
}


def _watermarks(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    """(low, high) offsets of `tp`, asking again every 0.2 s while its leader is not settled."""
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=max(deadline - time.monotonic(), 1.0))
        except KafkaException as exc:
            if exc.args[0].code() not in _NOT_SETTLED or time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # a backoff between requests to the broker, not a wait for an event


@dataclass
class _FileWriter:
    """One file being assembled: bytes appended in chunk order, counted and hashed as they come."""

    path: Path

    def __post_init__(self) -> None:
        self.handle = open(self.path, "wb")  # noqa: SIM115 - closed by close(), after the whole download
        self.digest = hashlib.sha256()
        self.size = 0
        self.chunks = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)
        self.chunks += 1

    def close(self) -> None:
        self.handle.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
