"""Publisher: offsets become committable only when every record of their flush is acknowledged."""

import hashlib

import numpy as np
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from stream_worker.codec import SingleObjectCodec
from stream_worker.metrics import WorkerMetrics
from stream_worker.worker.inference import Ranked
from stream_worker.worker.publish import (
    DLQ_ORIGINAL_SHA256,
    DLQ_ORIGINAL_SIZE,
    DLQ_REASON,
    DLQ_TRUNCATED,
    RETRY_BACKOFF_S,
    Publisher,
)
from stream_worker.worker.state import StateBatch
from tests.unit.stream_worker.fakes import FakeMessage, FakeProducer

TP = ("events", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def publisher(producer: FakeProducer, clock: Clock | None = None, dlq_max_bytes: int = 1_000_000):
    metrics = WorkerMetrics(CollectorRegistry())
    pub = Publisher(
        producer,
        SingleObjectCodec("recommendation"),
        recommendations_topic="recs",
        dlq_topic="dlq",
        metrics=metrics,
        dlq_max_bytes=dlq_max_bytes,
        clock=clock or Clock(),
    )
    return pub, metrics


def one_list(pub: Publisher, user: str = "u") -> None:
    batch = StateBatch(
        user_ids=[user],
        item_codes=np.zeros((1, 1), np.int32),
        weights=np.ones((1, 1), np.float32),
        times_s=np.zeros((1, 1), np.uint32),
        events_seen=np.array([1]),
        last_event_ms=np.array([5]),
        last_event_ids=["e"],
    )
    pub.recommendations(batch, Ranked.from_lists([["i"]], [[1.0]]), model_name="m", model_version=1)


def test_offsets_are_committable_only_after_every_record_of_their_flush_and_the_flushes_before():
    producer = FakeProducer()
    pub, metrics = publisher(producer)
    one_list(pub, "a")
    pub.dead_letter(FakeMessage("events", 0, 3, b"k", b"bad"), "decode", "not avro")
    pub.seal({TP: 4})
    one_list(pub, "b")
    pub.seal({TP: 7})

    producer.ack(only=1)  # the first flush still waits for its dead letter
    assert pub.committable() == {}
    assert pub.in_flight == 2
    producer.records[2].done = True  # the second flush is acknowledged before the first ...
    producer.records[2].on_delivery(None, None)
    assert pub.committable() == {}  # ... which still holds it back
    producer.ack()
    assert pub.committable() == {TP: 7}
    assert metrics.recommendations._value.get() == 2
    assert metrics.dead_letters.labels("decode")._value.get() == 1


def test_a_refused_record_holds_its_offsets_back_and_is_produced_again_after_a_back_off():
    producer, clock = FakeProducer(), Clock()
    pub, metrics = publisher(producer, clock)
    one_list(pub)
    pub.seal({TP: 1})
    producer.ack(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    pub.poll()
    assert pub.committable() == {} and pub.refused == 1
    assert len(producer.records) == 1, "produced again before the back-off"
    clock.now += RETRY_BACKOFF_S
    pub.poll()
    assert len(producer.records) == 2 and pub.refused == 0
    assert pub.committable() == {}
    producer.ack()
    assert pub.committable() == {TP: 1}
    assert metrics.produce_errors.labels("recommendations", "TOPIC_AUTHORIZATION_FAILED")._value.get() == 1


def test_a_dead_letter_too_large_for_the_dlq_is_cut_to_fit_with_its_size_and_hash_in_headers():
    producer = FakeProducer(max_bytes=1_000_000)
    pub, metrics = publisher(producer, dlq_max_bytes=1_000_000)
    value = bytes(range(256)) * 4100  # 1,049,600 bytes: over the producer's limit
    pub.dead_letter(FakeMessage("events", 1, 9, b"user", value, [("trace", b"x")]), "decode", "not avro")
    (record,) = producer.records
    headers = dict(record.headers)
    assert len(record.value) + len(record.key) + sum(len(k) + len(v) for k, v in record.headers) <= 1_000_000
    assert record.value == value[: len(record.value)] and record.key == b"user"
    assert headers[DLQ_ORIGINAL_SIZE] == str(len(value)).encode()
    assert headers[DLQ_ORIGINAL_SHA256] == hashlib.sha256(value).hexdigest().encode()
    assert headers[DLQ_TRUNCATED] == b"value" and headers[DLQ_REASON] == b"decode" and headers["trace"] == b"x"
    assert metrics.dead_letters_truncated._value.get() == 1


def test_a_dead_letter_the_broker_finds_too_large_is_cut_further_and_sent_again():
    producer, clock = FakeProducer(), Clock()
    pub, _ = publisher(producer, clock)
    value = b"v" * 600_000
    pub.dead_letter(FakeMessage("events", 0, 0, b"k", value), "decode", "bad")
    pub.seal({TP: 1})
    producer.ack(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))  # the topic's limit is lower than assumed
    clock.now += RETRY_BACKOFF_S
    pub.poll()
    retried = producer.records[-1]
    assert len(retried.value) < 300_000 and dict(retried.headers)[DLQ_ORIGINAL_SIZE] == b"600000"
    producer.ack()
    assert pub.committable() == {TP: 1}
