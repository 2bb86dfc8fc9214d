"""Checkpoints through Kafka on a real broker: an ML-20M-sized Mult-VAE travels in chunks under the
broker's default message limits and loads with identical tensors in another 'pod'; a chunk that
is missing or differs from the manifest is detected, and nothing half-written is left behind."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from models import checkpoint
from models.multvae import MultVAE
from stream_worker.channel.checkpoint_topic import (
    CHUNK_BYTES,
    CHUNKS_PARTITION,
    MANIFESTS_PARTITION,
    CheckpointIntegrityError,
    CheckpointNotFound,
    CheckpointTransferError,
    fetch_checkpoint,
    local_checkpoint,
    publish_checkpoint,
    read_manifests,
)
from stream_worker.kafka.topics import ensure_topics

pytestmark = pytest.mark.integration

ML20M_ITEMS = 20_108  # items of ML-20M after the Mult-VAE paper's preprocessing


@pytest.fixture
def settings(make_settings):
    settings = make_settings()
    ensure_topics(settings, partitions=1)
    return settings


def save_multvae(model_dir: Path, n_items: int, *, version: int | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = MultVAE(n_items)  # the paper's default sizes: I -> 600 -> 200 -> 600 -> I
    return checkpoint.save(
        model, model_dir, item_ids=[f"i{n}" for n in range(n_items)], version=version, name="multvae"
    )


def test_the_checkpoints_topic_is_compacted_with_default_message_limits(settings):
    admin = AdminClient(settings.kafka_common())
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.checkpoints_topic)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["cleanup.policy"].value == "compact"
    assert config["max.message.bytes"].is_default, "the checkpoints must fit the broker's default record size"
    assert int(config["max.message.bytes"].value) >= 2 * CHUNK_BYTES


def test_an_ml20m_sized_multvae_round_trips_to_another_pod_with_identical_tensors(settings, tmp_path):
    trainer_pod, worker_pod = tmp_path / "trainer-pod", tmp_path / "worker-pod"
    folder = save_multvae(trainer_pod, ML20M_ITEMS)
    size = (folder / checkpoint.WEIGHTS_FILE).stat().st_size
    sha = checkpoint.weights_sha256(folder)

    started = time.perf_counter()
    uri = publish_checkpoint(settings, folder)
    published = time.perf_counter()
    fetched = fetch_checkpoint(settings, uri, worker_pod, expected_weights_sha256=sha, timeout_s=120)
    done = time.perf_counter()
    print(
        f"\n{size / 1e6:.1f} MB of weights ({ML20M_ITEMS} items) in {-(-size // CHUNK_BYTES)} chunks: "
        f"publish {published - started:.2f}s, fetch {done - published:.2f}s"
    )

    assert uri == f"kafka://{settings.checkpoints_topic}/multvae/v000001"
    assert fetched == worker_pod / "multvae" / "v000001"
    assert checkpoint.weights_sha256(fetched) == sha
    assert (fetched / checkpoint.METADATA_FILE).read_bytes() == (folder / checkpoint.METADATA_FILE).read_bytes()
    original, copy = checkpoint.load(folder), checkpoint.load(fetched)
    assert copy.metadata == original.metadata
    theirs, ours = original.model.tensors(), copy.model.tensors()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[name], ours[name]) for name in theirs)
    assert [p.name for p in (worker_pod / "multvae").iterdir()] == ["v000001"], "a staging folder was left behind"

    # A complete copy already there is verified and kept, not fetched again.
    assert fetch_checkpoint(settings, uri, worker_pod, expected_weights_sha256=sha, timeout_s=30) == fetched


def republish(settings, folder: Path, *, alter: dict[int, bytes | None]) -> None:
    """Write the weights' chunks again with some replaced (bytes) or left out (None), then the
    manifest as published but pointing at these chunks: what a reader sees if records were garbled
    or lost between the trainer and the broker."""
    key = "multvae/v000001/manifest"
    manifest = read_manifests(settings)[key]
    producer = Producer({**settings.kafka_common(), "enable.idempotence": True})
    offsets: list[int] = []

    def delivered(err, msg) -> None:
        assert err is None, err
        offsets.append(msg.offset())

    data = (folder / checkpoint.WEIGHTS_FILE).read_bytes()
    for index in range(manifest["files"]["weights"]["chunks"]):
        chunk = data[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
        if index in alter and alter[index] is None:
            continue
        producer.produce(
            settings.checkpoints_topic,
            alter.get(index, chunk),
            f"multvae/v000001/weights/{index:05d}".encode(),
            partition=CHUNKS_PARTITION,
            on_delivery=delivered,
        )
    metadata = (folder / checkpoint.METADATA_FILE).read_bytes()
    producer.produce(
        settings.checkpoints_topic,
        metadata,
        b"multvae/v000001/metadata/00000",
        partition=CHUNKS_PARTITION,
        on_delivery=delivered,
    )
    assert producer.flush(30) == 0
    manifest.update(first_offset=min(offsets), last_offset=max(offsets))
    producer.produce(
        settings.checkpoints_topic, json.dumps(manifest).encode(), key.encode(), partition=MANIFESTS_PARTITION
    )
    assert producer.flush(30) == 0


@pytest.mark.parametrize(
    ("alter", "says"),
    [
        ({3: b"\x00" * CHUNK_BYTES}, "SHA-256"),  # same size, other bytes
        ({3: None}, "chunk 00003 of weights.safetensors is missing"),
    ],
    ids=["corrupted-chunk", "missing-chunk"],
)
def test_a_corrupted_or_missing_chunk_is_detected_and_nothing_is_left_behind(settings, tmp_path, alter, says):
    folder = save_multvae(tmp_path / "trainer-pod", 2_000)  # 9.6 MB, 19 chunks
    uri = publish_checkpoint(settings, folder)
    republish(settings, folder, alter=alter)
    dest = tmp_path / "worker-pod"
    with pytest.raises(CheckpointIntegrityError, match=says):
        fetch_checkpoint(settings, uri, dest, expected_weights_sha256=None, timeout_s=60)
    assert list((dest / "multvae").iterdir()) == [], "a partial checkpoint or staging folder was left behind"


def test_a_hash_other_than_the_announced_one_or_an_unknown_version_is_refused(settings, tmp_path):
    folder = save_multvae(tmp_path / "trainer-pod", 50)
    uri = publish_checkpoint(settings, folder)
    with pytest.raises(CheckpointIntegrityError, match="the announcement says"):
        fetch_checkpoint(settings, uri, tmp_path / "pod", expected_weights_sha256="ab" * 32, timeout_s=30)
    with pytest.raises(CheckpointNotFound, match="no manifest multvae/v000009/manifest"):
        fetch_checkpoint(
            settings, uri.replace("v000001", "v000009"), tmp_path / "pod", expected_weights_sha256=None, timeout_s=30
        )
    with pytest.raises(CheckpointTransferError, match="not the checkpoints topic"):
        fetch_checkpoint(
            settings, "kafka://elsewhere/multvae/v000001", tmp_path / "pod", expected_weights_sha256=None, timeout_s=30
        )
    assert not (tmp_path / "pod" / "multvae" / "v000001").exists()


def test_only_the_newest_versions_stay_on_the_topic(settings, tmp_path):
    settings = settings.model_copy(update={"checkpoints_keep": 2})
    uris = [publish_checkpoint(settings, save_multvae(tmp_path / "trainer-pod", 50, seed=v)) for v in range(4)]
    assert sorted(read_manifests(settings)) == ["multvae/v000003/manifest", "multvae/v000004/manifest"]
    with pytest.raises(CheckpointNotFound, match="deleted as older than the newest 2 versions"):
        fetch_checkpoint(settings, uris[0], tmp_path / "pod", expected_weights_sha256=None, timeout_s=30)
    newest = fetch_checkpoint(settings, uris[-1], tmp_path / "pod", expected_weights_sha256=None, timeout_s=30)
    assert checkpoint.weights_sha256(newest) == checkpoint.weights_sha256(tmp_path / "trainer-pod" / "v000004")

    # A worker's cache keeps the newest versions too, but never the one just fetched (a rollback).
    cache = tmp_path / "pod" / "multvae"
    for newer in ("v000005", "v000006"):
        shutil.copytree(newest, cache / newer)
    settings = settings.model_copy(update={"checkpoint_cache_dir": tmp_path / "pod"})
    rolled_back = local_checkpoint(settings, uris[2], expected_weights_sha256=None)
    assert sorted(p.name for p in cache.iterdir()) == ["v000003", "v000005", "v000006"]
    assert checkpoint.load(rolled_back).metadata.version == 3


def test_publishing_again_is_idempotent_a_version_is_never_overwritten_and_the_cli_fetches_the_newest(
    settings, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from stream_worker.cli.app import app
    from tests.integration.kafka_helpers import end_offsets

    folder = save_multvae(tmp_path / "trainer-pod", 50)
    uri = publish_checkpoint(settings, folder)
    ends = end_offsets(settings, settings.checkpoints_topic)
    assert publish_checkpoint(settings, folder) == uri  # e.g. a rollback announcing it again
    assert end_offsets(settings, settings.checkpoints_topic) == ends, "the same files were published twice"
    other = save_multvae(tmp_path / "restarted-trainer", 50, seed=1)
    with pytest.raises(CheckpointTransferError, match="versions are never overwritten"):
        publish_checkpoint(settings, other)

    monkeypatch.setenv("STREAMREC_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("STREAMREC_CHECKPOINTS_TOPIC", settings.checkpoints_topic)
    runner = CliRunner()
    fetched = runner.invoke(app, ["checkpoints", "fetch", "--name", "multvae", "--to", str(tmp_path / "init")])
    assert fetched.exit_code == 0, fetched.output
    assert checkpoint.weights_sha256(tmp_path / "init" / "multvae" / "v000001") == checkpoint.weights_sha256(folder)
    listed = runner.invoke(app, ["checkpoints", "list"])
    assert uri in listed.output and checkpoint.weights_sha256(folder) in listed.output
    missing = runner.invoke(app, ["checkpoints", "fetch", "--name", "cfgan", "--to", str(tmp_path / "init")])
    assert missing.exit_code == 1 and "holds no checkpoint of 'cfgan' yet" in missing.output
    assert "Traceback" not in missing.output
    tolerated = ["checkpoints", "fetch", "--name", "cfgan", "--to", str(tmp_path / "init"), "--missing-ok"]
    assert runner.invoke(app, tolerated).exit_code == 0
