import logging
import socket

import pytest
from confluent_kafka import KafkaError

from stream_worker.config import load_settings
from stream_worker.kafka.check import (
    KafkaConfigError,
    KafkaUnavailable,
    _reason,
    check_kafka,
    local_port,
    quiet,
)
from stream_worker.kafka.clients import ThrottledLog


def test_local_port_only_for_this_machine():
    assert local_port("127.0.0.1:19092") == 19092
    assert local_port("localhost:9093,other:9092") == 9093
    assert local_port("kafka.example.com:9092") is None


def test_quiet_silences_librdkafka_unless_verbose_or_set_by_the_user():
    settings = load_settings()
    assert quiet(settings).kafka_options["log_level"] == "0"
    assert "log_level" not in quiet(settings, verbose=True).kafka_options
    mine = load_settings(kafka_options={"log_level": "7"})
    assert quiet(mine).kafka_options["log_level"] == "7"


def test_an_address_nobody_listens_on_is_one_sentence_within_the_timeout():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(bootstrap_servers=f"127.0.0.1:{port}")
    with pytest.raises(KafkaUnavailable) as caught:
        check_kafka(settings, timeout_s=0.5)
    assert str(caught.value) == (
        f"cannot reach Kafka at 127.0.0.1:{port} within 0.5 s — is it running? (streamrec kafka start --port {port})"
    )


def test_an_unknown_librdkafka_property_is_a_usage_error_naming_it():
    settings = load_settings(kafka_options={"no.such.thing": "1"})
    with pytest.raises(KafkaConfigError, match=r"no\.such\.thing.*STREAMREC_KAFKA_OPTIONS"):
        check_kafka(settings, timeout_s=0.5)


def test_reason_drops_the_broker_prefix_and_state_suffix():
    error = KafkaError(
        KafkaError._AUTHENTICATION,
        "sasl_plaintext://127.0.0.1:9092/bootstrap: SASL authentication error: wrong password "
        "(after 3ms in state AUTH)",
    )
    assert _reason(error) == "SASL authentication error: wrong password"


def test_throttled_log_logs_once_per_period_per_kind(caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("stream_worker.kafka.clients.time.monotonic", lambda: now[0])
    throttled = ThrottledLog(logging.getLogger("t"), every_s=60)
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            throttled.warning("client", "Connect failed")
        throttled.warning("commit", "commit failed")  # another kind is not held back by the first
        now[0] += 61
        throttled.warning("client", "Connect failed")
    assert [r.getMessage() for r in caplog.records] == [
        "Connect failed",
        "commit failed",
        "Connect failed (49 similar since the last line)",
    ]
