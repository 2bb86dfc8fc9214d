"""A newcomer's first hour: every ordinary mistake, made with the real `streamrec` command in a
subprocess, ends in one sentence that names the thing and what to do, with the right exit code
(2 = usage, 1 = runtime, 130 = interrupted) and never a traceback.

Cases that need no broker run in parallel (a thread per subprocess); "Kafka away" uses a free
port nobody listens on, with a 1 s reachability timeout. Cases about topics, security settings
and interruptions use the session's real broker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from stream_worker.kafka.local import free_port
from stream_worker.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import end_offsets, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
# 40 users x 30 items, 8 ratings each, in u.data's format (user, item, rating, timestamp).
RATINGS = "".join(
    f"{u}\t{(u * 7 + n * 3) % 30 + 1}\t{n % 5 + 1}\t{881250949 + u * 8 + n}\n" for u in range(1, 41) for n in range(8)
)


@dataclass
class Case:
    name: str
    args: list[str]
    code: int
    named: list[str]  # every one must appear in stderr
    env: dict[str, str] = field(default_factory=dict)


def streamrec(
    args: list[str], env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return subprocess.run(
        [sys.executable, "-m", "stream_worker", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO_ROOT,
    )


def assert_one_sentence(result: subprocess.CompletedProcess, case: Case) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    where = f"{case.name}: {case.args} -> exit {result.returncode}\nstderr:\n{result.stderr}\nstdout:\n{result.stdout}"
    assert "Traceback" not in result.stderr + result.stdout, where
    assert result.returncode == case.code, where
    assert 1 <= len(lines) <= 3, where
    for thing in case.named:
        assert thing in result.stderr, f"{thing!r} not named; {where}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("first-hour")
    paths = {
        "random": folder / "notes.txt",
        "empty": folder / "empty.data",
        "ratings": folder / "u.data",
        "bad_line": folder / "bad.data",
        "titles": folder / "titles.txt",
    }
    paths["random"].write_text("Dear diary, today I tried streamrec.\nIt was fun.\n")
    paths["empty"].write_text("")
    paths["ratings"].write_text(RATINGS)
    paths["bad_line"].write_text(RATINGS + "4\t10\tfive\t881250954\n")  # line 321
    paths["titles"].write_text("\n\njust some words\n")
    return paths


@pytest.fixture(scope="module")
def model_dir(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (popularity) checkpoint made by `streamrec train`, which must end with a validation figure."""
    out = tmp_path_factory.mktemp("models")
    result = streamrec(["train", "--ratings", str(files["ratings"]), "--kind", "pop", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stderr and "validation on 4 held-out users: ndcg@20=" in result.stderr, result.stderr
    return out


def test_usage_mistakes_need_no_broker(files: dict[str, Path], model_dir: Path, tmp_path: Path) -> None:
    away = f"127.0.0.1:{free_port()}"  # nobody listens: the clients must fail before connecting
    truncated = tmp_path / "truncated"
    (truncated / "v000001").mkdir(parents=True)
    for name in ("metadata.json", "weights.safetensors"):
        (truncated / "v000001" / name).write_bytes((model_dir / "v000001" / name).read_bytes())
    weights = truncated / "v000001" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    kafka = {"STREAMREC_BOOTSTRAP_SERVERS": away}
    cases = [
        Case("kafka options not JSON", ["topics", "create"], 2, ["STREAMREC_KAFKA_OPTIONS", "JSON"],
             {**kafka, "STREAMREC_KAFKA_OPTIONS": "security.protocol=SSL"}),
        Case("event weights not JSON", ["topics", "create"], 2, ["STREAMREC_EVENT_WEIGHTS", "JSON"],
             {**kafka, "STREAMREC_EVENT_WEIGHTS": "PURCHASE=10"}),
        Case("kafka option value not a string", ["topics", "create"], 2,
             ["STREAMREC_KAFKA_OPTIONS", "linger.ms", "string"],
             {**kafka, "STREAMREC_KAFKA_OPTIONS": '{"linger.ms": 20}'}),
        Case("unknown librdkafka property", ["topics", "create"], 2, ["STREAMREC_KAFKA_OPTIONS", "no.such.property"],
             {**kafka, "STREAMREC_KAFKA_OPTIONS": '{"no.such.property": "1"}'}),
        Case("unknown trainer model kind", ["trainer", "--model-dir", str(tmp_path)], 2,
             ["STREAMREC_TRAINER_MODEL_KIND=foo", "multvae"], {**kafka, "STREAMREC_TRAINER_MODEL_KIND": "foo"}),
        Case("train on a random text file", ["train", "--ratings", str(files["random"]), "--out", str(tmp_path)], 2,
             [f"{files['random']}:1", "u.data"]),
        Case("train on a bad line", ["train", "--ratings", str(files["bad_line"]), "--out", str(tmp_path)], 2,
             [f"{files['bad_line']}:321", "five"]),
        Case("train on an empty file", ["train", "--ratings", str(files["empty"]), "--out", str(tmp_path)], 2,
             [str(files["empty"]), "empty"]),
        Case("train an unknown kind", ["train", "--ratings", str(files["ratings"]), "--kind", "foo", "--out",
             str(tmp_path)], 2, ["--kind=foo", "multvae"]),
        Case("replay a missing file", ["replay", "--ratings", str(tmp_path / "nope.data")], 2,
             [str(tmp_path / "nope.data"), "--ratings"], kafka),
        Case("evaluate an unknown protocol", ["evaluate", "--protocol", "foo"], 2, ["--protocol foo", "chrono-loo"]),
        Case("evaluate an unknown model", ["evaluate", "--protocol", "chrono-loo", "--models", "ease,foo"], 2,
             ["--models", "foo"]),
        Case("strong without ratings", ["evaluate", "--protocol", "strong"], 2, ["--ratings"]),
        Case("evaluate without the data", ["evaluate", "--protocol", "chrono-loo", "--data-dir", str(tmp_path / "no")],
             2, [str(tmp_path / "no"), "--data-dir"]),
        Case("worker on a truncated checkpoint", ["worker", "--model", str(truncated)], 2,
             [str(weights), "truncated"], kafka),
        Case("tail with a bad titles file", ["tail", "--titles", str(files["titles"])], 2,
             [str(files["titles"]), "u.item"], kafka),
    ]  # fmt: skip
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: streamrec(case.args, case.env), cases))
    for case, result in zip(cases, results, strict=True):
        assert_one_sentence(result, case)


def test_kafka_away_is_one_sentence_naming_the_address(files: dict[str, Path], model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {"STREAMREC_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "STREAMREC_KAFKA_CHECK_TIMEOUT_S": "1"}
    named = [f"cannot reach Kafka at 127.0.0.1:{port} within 1 s", f"streamrec kafka start --port {port}"]
    cases = [
        Case("topics create", ["topics", "create"], 1, named, env),
        Case("replay", ["replay", "--synthetic", "--events", "100"], 1, named, env),
        Case("tail", ["tail"], 1, named, env),
        Case("train from the topic", ["train", "--from-topic", "--out", str(tmp_path)], 1, named, env),
        Case("trainer", ["trainer", "--model-dir", str(tmp_path), "--once"], 1, named, env),
        Case("demo on a named cluster", ["demo"], 1, named, env),
        Case("kafka stop of nothing", ["kafka", "stop", "--home", str(tmp_path)], 0,
             [f"nothing to stop: Kafka on 127.0.0.1:{port} was not running"], env),
        Case("version", ["--version"], 0, [], env),
    ]  # fmt: skip
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: streamrec(case.args, case.env), cases))
    for case, result in zip(cases[:-1], results[:-1], strict=True):
        assert_one_sentence(result, case)
    assert results[-1].returncode == 0 and results[-1].stdout.startswith("streamrec 0."), results[-1]


def test_the_worker_waits_for_kafka_saying_why_and_stops_on_sigterm(model_dir: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env |= {"STREAMREC_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "STREAMREC_KAFKA_CHECK_TIMEOUT_S": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream_worker", "worker", "--model", str(model_dir), "--metrics-port", "0"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        seen = []
        assert worker.stderr is not None
        for line in worker.stderr:  # bounded: the check gives up after 1 s and says so
            seen.append(line)
            if "cannot reach Kafka" in line:
                break
        assert f"cannot reach Kafka at 127.0.0.1:{port} within 1 s" in seen[-1], seen
        assert "retrying" in seen[-1], seen
        worker.send_signal(signal.SIGTERM)
        _, rest = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, rest
    assert "stopped before Kafka answered" in rest and "Traceback" not in "".join(seen) + rest
    assert len([line for line in seen + rest.splitlines() if "cannot reach" in line]) == 1  # not a flood


def test_a_taken_metrics_port_is_named(model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = streamrec(
            ["worker", "--model", str(model_dir), "--metrics-port", str(port)],
            {"STREAMREC_METRICS_HOST": "127.0.0.1", "STREAMREC_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
        )
    assert_one_sentence(result, Case("taken port", [], 1, [f"port {port}", "--metrics-port"]))


@pytest.mark.integration
def test_missing_topics_and_a_wrong_security_protocol_are_named(kafka_bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    env = {"STREAMREC_BOOTSTRAP_SERVERS": kafka_bootstrap, "STREAMREC_EVENTS_TOPIC": f"t{run}.events",
           "STREAMREC_RECOMMENDATIONS_TOPIC": f"t{run}.recs"}  # fmt: skip
    sasl = '{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "a", '
    sasl += '"sasl.password": "b"}'
    cases = [
        Case("replay to a missing topic", ["replay", "--synthetic", "--events", "10"], 1,
             [f"topic 't{run}.events' does not exist on {kafka_bootstrap}", "streamrec topics create"], env),
        Case("tail a missing topic", ["tail"], 1, [f"topic 't{run}.recs' does not exist", "streamrec topics create"],
             env),
        Case("SASL against a PLAINTEXT broker", ["topics", "create"], 1,
             [f"authentication failed at {kafka_bootstrap}", "SCRAM-SHA-256", "STREAMREC_KAFKA_OPTIONS"],
             {**env, "STREAMREC_KAFKA_OPTIONS": sasl, "STREAMREC_KAFKA_CHECK_TIMEOUT_S": "2"}),
    ]  # fmt: skip
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda case: streamrec(case.args, case.env), cases))
    for case, result in zip(cases, results, strict=True):
        assert_one_sentence(result, case)


@pytest.mark.integration
def test_interrupted_replay_reports_what_was_acknowledged(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    ensure_topics(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")} | settings.to_env()
    replay = subprocess.Popen(
        [sys.executable, "-m", "stream_worker", "replay", "--synthetic", "--events", "1000000", "--rate", "2000"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        wait_until(lambda: _events_on(settings) > 0, 60, "the first events")
        replay.send_signal(signal.SIGINT)
        _out, err = replay.communicate(timeout=60)
    finally:
        replay.kill()
    assert replay.returncode == 130, err
    assert "Traceback" not in err and "SystemError" not in err, err
    line = next(line for line in err.splitlines() if line.startswith("interrupted after"))
    acknowledged = int(line.split(": ")[1].split(" acknowledged")[0])
    wait_until(lambda: _events_on(settings) >= 0, 30, "the topic's partition leaders")
    assert acknowledged == _events_on(settings) > 0, err  # exactly the acknowledged events are on the topic


def _events_on(settings) -> int:  # type: ignore[no-untyped-def]
    """Events on the events topic; -1 while a fresh topic's partition leaders are still settling."""
    try:
        return sum(end_offsets(settings, settings.events_topic).values())
    except KafkaException as exc:
        if exc.args[0].code() in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE):
            return -1
        raise


@pytest.mark.integration
def test_the_demo_deletes_its_topics_and_waits_for_it(make_settings) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console

    from stream_worker.devtools.demo import _delete_topics

    settings = make_settings()
    ensure_topics(settings)
    out = Console(record=True, width=200)
    _delete_topics(settings, out)
    assert "deleted this run's 6 topics" in out.export_text()
    # The controller confirmed the deletion; the broker's metadata follows within moments.
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_common())
    ours = {settings.events_topic, settings.recommendations_topic, settings.dlq_topic, settings.model_updates_topic}
    wait_until(lambda: not ours & set(admin.list_topics(timeout=10).topics), 10, "the topics to disappear")
