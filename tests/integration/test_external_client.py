"""A client written by someone else gets correct recommendations back.

The client is Apache Avro's Java library (the reference single-object encoder), reading only
schemas/*.avsc; kcat carries its bytes to and from Kafka. Nothing of streamrec's Python is on
its path, so this proves the wire contract, not our own codec agreeing with itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from stream_worker.codec import SCHEMA_DIR
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.kafka.local import DEFAULT_HOME
from stream_worker.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import drained, running_worker, train_synthetic_model, wait_until

pytestmark = pytest.mark.integration

CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "java"
JARS = DEFAULT_HOME.parent / "external-client-jars"
WORLD = SyntheticWorld(n_users=20, n_items=120, seed=11)


def _tools() -> None:
    missing = [tool for tool in ("kcat", "java", "mvn") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH (.ci/run installs them: apt-get install kcat)")


def _java(*args: str) -> str:
    if not any(JARS.glob("avro-*.jar")):
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(CLIENT_DIR / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={JARS}",
            ],
            check=True,
        )
    result = subprocess.run(
        ["java", "-cp", f"{JARS}/*", str(CLIENT_DIR / "ExternalClient.java"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_java_avro_client_through_kcat_gets_correct_recommendations(make_settings, tmp_path):
    _tools()
    settings = make_settings(top_k=8)
    ensure_topics(settings, partitions=2)
    train_synthetic_model(WORLD, settings.model_dir)
    bootstrap = settings.bootstrap_servers

    # The client encodes its events with Avro's BinaryMessageEncoder ...
    events = list(WORLD.events(300, seed=5, start_ms=1_750_000_000_000, spacing_ms=10))
    (tmp_path / "events.tsv").write_text(
        "".join(
            f"{e.event_id}\t{e.user_id}\t{e.item_id}\t{e.event_type}\t{e.event_time_ms}\t{e.value or ''}\n"
            for e in events
        )
    )
    _java("encode", str(SCHEMA_DIR / "user_event.avsc"), str(tmp_path / "events.tsv"), str(tmp_path / "out"))
    files_by_user: dict[str, list[str]] = defaultdict(list)
    for n, event in enumerate(events):
        files_by_user[event.user_id].append(str(tmp_path / "out" / f"{n}.avro"))
    # ... and kcat sends each file as one record, keyed by the user id.
    for user_id, files in files_by_user.items():
        subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", settings.events_topic, "-k", user_id, *files], check=True)

    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 60, "the worker to drain the client's events")
        assert worker.metrics.events._value.get() == len(events)

    framed = subprocess.run(
        [
            "kcat",
            "-C",
            "-b",
            bootstrap,
            "-t",
            settings.recommendations_topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%R%s",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    (tmp_path / "recs.bin").write_bytes(framed)
    lines = _java("decode", str(SCHEMA_DIR / "recommendation.avsc"), str(tmp_path / "recs.bin")).splitlines()
    newest = {}
    for line in lines:
        record = json.loads(line)
        newest[record["user_id"]] = record  # kcat prints partitions in turn; order within a user holds

    seen: dict[str, set[str]] = defaultdict(set)
    last: dict[str, str] = {}
    for event in events:
        seen[event.user_id].add(event.item_id)
        last[event.user_id] = event.event_id
    assert set(newest) == set(seen)
    for user_id, record in newest.items():
        items = [item["item_id"] for item in record["items"]]
        assert len(items) == 8
        assert not set(items) & seen[user_id]
        assert record["last_event_id"] == last[user_id]
