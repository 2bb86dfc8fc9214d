import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from stream_worker.codec import (
    DecodeError,
    InvalidEvent,
    RegistryCodec,
    SingleObjectCodec,
    UserEvent,
    from_user_event,
    to_user_event,
)

# CRC-64-AVRO fingerprint of schemas/user_event.avsc as computed by Apache Avro Java 1.12.0
# (SchemaNormalization.parsingFingerprint64): the reference implementation is the test vector.
USER_EVENT_FINGERPRINT = 0x4440511790BED0FE

EVENT = UserEvent("e1", "alice", "book-7", "PURCHASE", None, 1_700_000_000_123, {"page": "home"})


def test_single_object_encoding_has_the_spec_header_and_round_trips():
    codec = SingleObjectCodec("user_event")
    data = codec.encode(from_user_event(EVENT))
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == USER_EVENT_FINGERPRINT.to_bytes(8, "little")
    assert to_user_event(codec.decode(data), b"alice") == EVENT


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b"", "not Avro single-object encoded"),
        (lambda b: b"\x00" + b[1:], "not Avro single-object encoded"),
        (lambda b: b[:2] + bytes(8) + b[10:], "unknown writer schema fingerprint"),
        (lambda b: b[:-4], "does not match the schema"),
        (lambda b: b + b"\x00\x00", "trailing bytes"),
    ],
)
def test_bad_bytes_raise_decode_error_with_a_reason(mangle, message):
    codec = SingleObjectCodec("user_event")
    with pytest.raises(DecodeError, match=message):
        codec.decode(mangle(codec.encode(from_user_event(EVENT))))


def test_schema_registry_framing_through_confluent_serdes_with_the_mock_registry():
    registry = SchemaRegistryClient.new_client({"url": "mock://codec-test"})
    codec = RegistryCodec("user_event", registry, "user-events")
    data = codec.encode(from_user_event(EVENT))
    assert data[0] == 0  # Confluent magic byte, then a 4-byte schema id
    schema_id = int.from_bytes(data[1:5], "big")
    assert registry.get_schema(schema_id).schema_str  # registered on first use
    record = codec.decode(data)
    assert record["event_time"] == EVENT.event_time_ms  # a plain int again, not a datetime
    assert to_user_event(record, b"alice") == EVENT
    with pytest.raises(DecodeError):
        codec.decode(b"\x00\x00\x00\x00\x01garbage")


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"user_id": ""}, b"", "user_id is empty"),
        ({"item_id": ""}, b"alice", "item_id is empty"),
        ({}, None, "record key"),
        ({}, b"bob", "record key"),
        ({"event_type": "RATING"}, b"alice", "RATING needs a value"),
        ({"event_type": "RATING", "value": 7.0}, b"alice", "RATING needs a value"),
        ({"event_time": -5}, b"alice", "before 1970"),
    ],
)
def test_rules_the_schema_cannot_express_are_checked(change, key, message):
    with pytest.raises(InvalidEvent, match=message):
        to_user_event({**from_user_event(EVENT), **change}, key)


def test_a_rating_with_a_value_is_valid():
    event = to_user_event({**from_user_event(EVENT), "event_type": "RATING", "value": 4.5}, b"alice")
    assert event.value == 4.5
