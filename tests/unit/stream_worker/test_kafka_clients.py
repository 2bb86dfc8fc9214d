"""The one client factory: every client gets the shared settings; overrides win; None removes a key."""

from stream_worker.config import Settings
from stream_worker.kafka import clients


def test_producer_config_is_idempotent_and_waits_out_outages():
    settings = Settings(bootstrap_servers="127.0.0.1:1", kafka_options={"client.id": "x"})
    config = clients.producer_config(settings)
    assert config["bootstrap.servers"] == "127.0.0.1:1" and config["client.id"] == "x"
    assert config["enable.idempotence"] is True and config["message.timeout.ms"] == 0


def test_overrides_win_and_none_removes_a_key(monkeypatch):
    made = []
    monkeypatch.setattr(clients, "Producer", lambda config: made.append(config))
    monkeypatch.setattr(clients, "Consumer", lambda config: made.append(config))
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    clients.new_producer(settings, **{"linger.ms": 20, "message.timeout.ms": None})
    clients.new_reader(settings, "g.restore", **{"isolation.level": "read_committed"})
    producer, reader = made
    assert producer["linger.ms"] == 20 and "message.timeout.ms" not in producer
    assert reader["group.id"] == "g.restore" and reader["enable.auto.commit"] is False
    assert reader["isolation.level"] == "read_committed" and reader["bootstrap.servers"] == "127.0.0.1:1"


def test_a_plain_dict_of_settings_works_too(monkeypatch):
    monkeypatch.setattr(clients, "Consumer", lambda config: config)
    config = clients.new_consumer({"bootstrap.servers": "h:1"}, "g", **{"fetch.wait.max.ms": 10})
    assert config == {"bootstrap.servers": "h:1", "group.id": "g", "enable.auto.commit": False, "fetch.wait.max.ms": 10}
