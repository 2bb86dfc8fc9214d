import pytest

from stream_worker.config import ConfigError, load_settings


def test_defaults_are_the_documented_contract():
    s = load_settings()
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert (s.events_topic, s.recommendations_topic, s.model_updates_topic, s.dlq_topic) == (
        "user-events",
        "recommendations",
        "model-updates",
        "user-events.dlq",
    )
    assert s.top_k == 20 and s.auto_offset_reset == "earliest"


def test_environment_is_read_with_the_prefix_and_options_win(monkeypatch):
    monkeypatch.setenv("STREAMREC_TOP_K", "7")
    monkeypatch.setenv("STREAMREC_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("STREAMREC_EVENT_WEIGHTS", '{"view": 0.5}')
    s = load_settings(top_k=9)
    assert s.top_k == 9 and s.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.event_weights["VIEW"] == 0.5 and s.event_weights["PURCHASE"] == 5.0


@pytest.mark.parametrize(
    ("env", "value", "says"),
    [
        ("STREAMREC_TOP_K", "0", "STREAMREC_TOP_K"),
        ("STREAMREC_BOOTSTRAP_SERVERS", "localhost", "is not host:port"),
        ("STREAMREC_AUTO_OFFSET_RESET", "middle", "STREAMREC_AUTO_OFFSET_RESET"),
        ("STREAMREC_DLQ_TOPIC", "user-events", "must be different"),
        ("STREAMREC_STATE_MAX_USERS", "10", "state_max_users"),
        ("STREAMREC_EVENT_WEIGHTS", '{"teleport": 1}', "unknown event types"),
        ("STREAMREC_TOPK", "5", "did you mean STREAMREC_TOP_K"),
    ],
)
def test_a_bad_setting_stops_with_one_sentence_naming_it(monkeypatch, env, value, says):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=says) as error:
        load_settings()
    assert "\n" not in str(error.value)


# --- Kafka credentials from a file ---------------------------------------------------------


def test_kafka_options_come_from_a_json_or_key_value_file_and_the_variable_wins(monkeypatch, tmp_path):
    as_json = tmp_path / "kafka.json"
    as_json.write_text('{"sasl.username": "worker", "sasl.password": "from-the-file", "security.protocol": "SSL"}')
    as_lines = tmp_path / "client.properties"
    as_lines.write_text("# a comment\nsasl.username = worker\n\nsasl.password=p=w\n")
    monkeypatch.setenv("STREAMREC_KAFKA_OPTIONS", '{"security.protocol": "SASL_SSL"}')
    monkeypatch.setenv("STREAMREC_KAFKA_OPTIONS_FILE", str(as_json))
    common = load_settings().kafka_common()
    assert common["sasl.password"] == "from-the-file" and common["security.protocol"] == "SASL_SSL"
    assert "from-the-file" not in str(load_settings().to_env()), "the password would be in a child's environment"
    monkeypatch.setenv("STREAMREC_KAFKA_OPTIONS_FILE", str(as_lines))
    assert load_settings().kafka_common()["sasl.password"] == "p=w"  # split at the first '=' only


def test_kafka_options_come_from_a_mounted_secret_folder_one_file_per_key(monkeypatch, tmp_path):
    # As Kubernetes mounts a Secret: a file per key (here renamed from Strimzi's `password`), plus
    # hidden bookkeeping entries that are not settings.
    (tmp_path / "..2026_11_28_15_00_00.123").mkdir()
    (tmp_path / "..data").symlink_to(tmp_path / "..2026_11_28_15_00_00.123")
    (tmp_path / "sasl.password").write_text("from-the-secret\n")
    monkeypatch.setenv("STREAMREC_KAFKA_OPTIONS", '{"sasl.username": "streamrec-worker"}')
    monkeypatch.setenv("STREAMREC_KAFKA_OPTIONS_FILE", str(tmp_path))
    common = load_settings().kafka_common()
    assert common["sasl.password"] == "from-the-secret" and common["sasl.username"] == "streamrec-worker"
    assert not any(key.startswith(".") for key in common)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read the Kafka options file"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is not key=value"),
        ("sasl.username worker", "line 1 of the Kafka options file"),
    ],
)
def test_a_bad_kafka_options_file_stops_with_one_sentence(monkeypatch, tmp_path, content, says):
    path = tmp_path / "kafka.options"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("STREAMREC_KAFKA_OPTIONS_FILE", str(path))
    with pytest.raises(ConfigError, match="STREAMREC_KAFKA_OPTIONS_FILE") as error:
        load_settings()
    assert says in str(error.value) and "\n" not in str(error.value)


def test_the_checkpoints_topic_must_be_its_own(monkeypatch):
    monkeypatch.setenv("STREAMREC_CHECKPOINTS_TOPIC", "model-updates")
    with pytest.raises(ConfigError, match="checkpoints topic must differ"):
        load_settings()
