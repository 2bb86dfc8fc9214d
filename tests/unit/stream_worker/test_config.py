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
