import numpy as np
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from stream_worker.codec import SingleObjectCodec
from stream_worker.inference import Ranked
from stream_worker.metrics import WorkerMetrics
from stream_worker.publish import DeliveryError, Publisher
from stream_worker.state import StateBatch


def test_an_unacknowledged_record_raises_instead_of_letting_offsets_be_committed():
    # Nothing listens on port 1: every record times out, and the publisher must say so.
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300, "log_level": 0})
    metrics = WorkerMetrics(CollectorRegistry())
    publisher = Publisher(
        producer, SingleObjectCodec("recommendation"), recommendations_topic="r", dlq_topic="d", metrics=metrics
    )
    batch = StateBatch(
        ["u"], np.zeros((1, 1), np.int32), np.ones((1, 1), np.float32), np.array([1]), np.array([5]), ["e"]
    )
    publisher.recommendations(batch, Ranked.from_lists([["i"]], [[1.0]]), model_name="m", model_version=1)
    with pytest.raises(DeliveryError, match="1 failed"):
        publisher.wait_delivered(timeout_s=10)
    assert metrics.recommendations._value.get() == 0
