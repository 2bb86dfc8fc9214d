"""Pure parts of checkpoints-through-Kafka and of the SASL local broker's configuration."""

import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_worker.channel.checkpoint_topic import (
    CHUNK_BYTES,
    CheckpointTransferError,
    _watermarks,
    checkpoint_uri,
    local_checkpoint,
    parse_uri,
)
from stream_worker.config import load_settings
from stream_worker.kafka.local import LocalKafka
from stream_worker.kafka.topics import checkpoints_topic_spec


def test_a_uri_names_topic_model_and_version_and_must_be_on_our_topic():
    settings = load_settings()
    uri = checkpoint_uri(settings.checkpoints_topic, "multvae", 3)
    assert uri == "kafka://model-checkpoints/multvae/v000003"
    assert parse_uri(settings, uri) == ("multvae", 3)
    with pytest.raises(CheckpointTransferError, match="not the checkpoints topic"):
        parse_uri(settings, "kafka://someone-elses-topic/multvae/v000003")
    for bad in ("kafka://model-checkpoints/multvae", "kafka://model-checkpoints/a/b/v000003", "/models/v000003"):
        with pytest.raises(CheckpointTransferError, match="is not a checkpoint URI"):
            parse_uri(settings, bad)


def test_a_path_announcement_is_loaded_from_the_directory_as_before():
    assert local_checkpoint(load_settings(), "/shared/models/v000002", expected_weights_sha256=None) == Path(
        "/shared/models/v000002"
    )


def test_the_topic_is_compacted_with_a_manifests_and_a_chunks_partition_and_chunks_fit_default_limits():
    spec = checkpoints_topic_spec(load_settings())
    assert (spec.topic, spec.num_partitions, spec.config["cleanup.policy"]) == ("model-checkpoints", 2, "compact")
    assert 2 * CHUNK_BYTES <= 1_048_588  # the broker's default max.message.bytes
    assert CHUNK_BYTES + 4096 < 1_000_000  # librdkafka's default message.max.bytes, with room for the key


def test_the_sasl_broker_stores_scram_users_at_format_time_and_logs_in_as_the_first(tmp_path):
    broker = LocalKafka(port=19092, home=tmp_path, sasl_users={"admin": "a-secret", "worker": "w-secret"})
    assert broker._scram_format_args() == [
        "--add-scram=SCRAM-SHA-512=[name=admin,password=a-secret]",
        "--add-scram=SCRAM-SHA-512=[name=worker,password=w-secret]",
    ]
    assert "listeners=SASL_PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in broker._sasl_properties()
    assert broker.client_options()["sasl.username"] == "admin"
    assert "authorizer.class.name" not in broker._sasl_properties()
    with_acls = LocalKafka(port=19092, home=tmp_path, sasl_users={"admin": "a-secret"}, acls=True)
    assert "super.users=User:admin;User:ANONYMOUS" in with_acls._sasl_properties()
    assert LocalKafka(port=19092, home=tmp_path).client_options() == {}
    with pytest.raises(ValueError, match="only letters, digits"):
        LocalKafka(home=tmp_path, sasl_users={"worker": "pass,word]"})


def test_the_watcher_refuses_a_kafka_uri_on_another_topic_and_fetches_nothing_for_a_stale_version(tmp_path):
    from stream_worker.channel.verify import Limits, Rejected, fetched_from_kafka

    settings = load_settings()
    limits = Limits(root=tmp_path, max_weights_bytes=1 << 30, min_item_overlap=0.5, max_version_jump=1000)
    update = {"model_name": "multvae", "version": 3, "checkpoint_uri": "kafka://elsewhere/multvae/v000003"}
    with pytest.raises(Rejected, match="not the checkpoints topic") as refused:
        fetched_from_kafka(settings, update, limits, {"multvae": 2})
    assert refused.value.reason == "location"
    # Not newer than what is known: handed to `verify` unchanged (which refuses it), no broker asked.
    stale = {**update, "checkpoint_uri": "kafka://model-checkpoints/multvae/v000003"}
    assert fetched_from_kafka(settings, stale, limits, {"multvae": 3}) == (stale, limits)
    plain = {**update, "checkpoint_uri": str(tmp_path / "v000003")}
    assert fetched_from_kafka(settings, plain, limits, {"multvae": 2}) == (plain, limits)


class _UnsettledConsumer:
    """Answers NOT_LEADER_FOR_PARTITION `times` times, as a broker does just after creating a topic."""

    def __init__(self, times: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.times, self.code, self.asked = times, code, 0

    def get_watermark_offsets(self, _tp, timeout):
        self.asked += 1
        if self.asked <= self.times:
            raise KafkaException(KafkaError(self.code))
        return 0, 7


def test_a_partition_whose_leader_is_not_settled_is_asked_again_until_the_deadline():
    tp = TopicPartition("model-checkpoints", 0)
    consumer = _UnsettledConsumer(times=2)
    assert _watermarks(consumer, tp, deadline=time.monotonic() + 10) == (0, 7)
    assert consumer.asked == 3
    with pytest.raises(KafkaException):  # still unsettled at the deadline: the error reaches the caller
        _watermarks(_UnsettledConsumer(times=10**6), tp, deadline=time.monotonic() + 0.5)
    other = _UnsettledConsumer(times=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):  # any other error is not retried
        _watermarks(other, tp, deadline=time.monotonic() + 10)
    assert other.asked == 1
