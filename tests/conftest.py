"""Shared fixtures: a real Kafka broker, isolated topics per test, a small real model.

The broker, in order of preference:
  1. an existing cluster named by STREAMREC_TEST_BOOTSTRAP_SERVERS;
  2. testcontainers' Kafka when a Docker engine answers;
  3. the local single-node broker from Maven's jars (stream_worker.kafka.local), on a free
     port with its data in a temporary folder, stopped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream_worker.config import ENV_PREFIX, Settings, load_settings, topics_under
from stream_worker.kafka.local import DEFAULT_HOME, LocalKafka, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("STREAMREC_TEST_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        # Confluent Platform 8.0 is Apache Kafka 4.0, KRaft only; testcontainers' Kafka module
        # is built around the cp-kafka images. (Not exercised here: this machine has no Docker.)
        with KafkaContainer("confluentinc/cp-kafka:8.0.0").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalKafka(port=free_port(), home=tmp_path_factory.mktemp("kafka"), jars=DEFAULT_HOME / "jars")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.destroy()


@pytest.fixture
def make_settings(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on fresh topics and a fresh consumer group (so tests never see each other's data)."""

    def make(**overrides: object) -> Settings:
        run = uuid.uuid4().hex[:8]
        base = {
            "bootstrap_servers": kafka_bootstrap,
            **topics_under(f"t{run}"),
            "group_id": f"t{run}.worker",
            "model_dir": tmp_path / "models",
            "metrics_port": 0,
            "trainer_metrics_port": 0,
            "max_batch_wait_ms": 20,
            "device": "cpu",
            "torch_threads": 0,  # the worker runs in this process: leave torch's global setting alone
        }
        return load_settings(**{**base, **overrides})

    return make


@pytest.fixture(autouse=True)
def _no_stray_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's STREAMREC_<setting> variables must not leak into tests."""
    for field in Settings.model_fields:
        monkeypatch.delenv(f"{ENV_PREFIX}{field.upper()}", raising=False)
