"""Pure parts of checkpoints-through-Kafka and of the SASL local broker's configuration."""

from pathlib import Path

import pytest

from stream_worker.checkpoint_topic import (
    CHUNK_BYTES,
    CheckpointTransferError,
    checkpoint_uri,
    checkpoints_topic_spec,
    local_checkpoint,
    parse_uri,
)
from stream_worker.config import load_settings
from stream_worker.kafka_local import LocalKafka


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
