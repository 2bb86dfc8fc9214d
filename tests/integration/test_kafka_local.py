"""`streamrec kafka start|stop` and `topics create`: idempotent, and nothing left running."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream_worker.config import load_settings
from stream_worker.kafka.local import DEFAULT_HOME, LocalKafka, free_port, process_alive
from stream_worker.kafka.topics import topic_specs

pytestmark = pytest.mark.integration


def streamrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream_worker", *args], capture_output=True, text=True, timeout=180)


def test_start_and_stop_are_idempotent_and_leave_no_process(tmp_path):
    # Share the session's jar cache, so this test does not fetch them again.
    home = tmp_path / "kafka"
    home.mkdir()
    (home / "jars").symlink_to(DEFAULT_HOME / "jars")
    port = str(free_port())
    broker = LocalKafka(port=int(port), home=home)

    first = streamrec("kafka", "start", "--port", port, "--home", str(home))
    assert first.returncode == 0 and "started" in first.stderr, first.stderr
    pid = int(broker.pid_file.read_text())
    second = streamrec("kafka", "start", "--port", port, "--home", str(home))
    assert second.returncode == 0 and "already running" in second.stderr

    created = streamrec("topics", "create", "--bootstrap-servers", f"127.0.0.1:{port}", "--partitions", "2")
    again = streamrec("topics", "create", "--bootstrap-servers", f"127.0.0.1:{port}")
    topics = len(topic_specs(load_settings()))
    assert created.stderr.count(": created") == topics and again.stderr.count(": exists") == topics, created.stderr

    stopped = streamrec("kafka", "stop", "--port", port, "--home", str(home))
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert not process_alive(pid)
    assert not broker.running()
    assert "was not running" in streamrec("kafka", "stop", "--port", port, "--home", str(home)).stderr


def test_a_cluster_id_that_starts_with_a_dash_still_formats(tmp_path, monkeypatch):
    # Random ids are URL-safe base64: one in 64 starts with "-", which once read as an option.
    import stream_worker.kafka.local as kafka_local

    monkeypatch.setattr(kafka_local, "_cluster_id", lambda: "-ZycFMRWTwyOmnHjH65ZMA")
    broker = LocalKafka(port=free_port(), home=tmp_path, jars=DEFAULT_HOME / "jars")
    try:
        assert broker.start() and broker.running()
    finally:
        broker.destroy()
    assert not broker.running()
