import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from stream_worker.codec import (
    DecodeError,
    EventRules,
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


def _body_offset_of_event_type(data: bytes) -> int:
    """Position of the event_type enum index in a single-object UserEvent with 1-char ids."""
    return 10 + 3 * 2  # header, then three strings of length 1 (one length byte + one char each)


@pytest.mark.parametrize("zigzag", [1, 11, 127])  # indexes -1, -6, -64: fastavro would wrap them
def test_negative_or_out_of_range_enum_indexes_are_decode_errors(zigzag):
    codec = SingleObjectCodec("user_event")
    data = bytearray(codec.encode({**from_user_event(EVENT), "event_id": "e", "user_id": "u", "item_id": "i"}))
    data[_body_offset_of_event_type(data)] = zigzag
    with pytest.raises(DecodeError):
        codec.decode(bytes(data))


def test_a_negative_union_branch_index_is_a_decode_error():
    codec = SingleObjectCodec("user_event")
    record = {**from_user_event(EVENT), "event_id": "e", "user_id": "u", "item_id": "i", "value": 3.0}
    data = bytearray(codec.encode(record))
    assert data[_body_offset_of_event_type(data) + 1] == 2  # the value union's branch 1 (double) ...
    data[_body_offset_of_event_type(data) + 1] = 1  # ... as -1, which fastavro reads as the same branch
    with pytest.raises(DecodeError, match="union branch index -1"):
        codec.decode(bytes(data))


def test_keys_must_be_valid_utf8_ids_must_be_short_and_times_not_in_the_future():
    record = from_user_event(EVENT)
    with pytest.raises(InvalidEvent, match="not valid UTF-8"):
        to_user_event(record, b"alice\xff")
    with pytest.raises(InvalidEvent, match="user_id has 300 characters"):
        to_user_event({**record, "user_id": "u" * 300}, b"u" * 300)
    rules = EventRules(max_clock_skew_ms=60_000, clock_ms=lambda: EVENT.event_time_ms - 61_000)
    with pytest.raises(InvalidEvent, match="in the future"):
        to_user_event(record, b"alice", rules)
    assert to_user_event(record, b"alice", EventRules(clock_ms=lambda: EVENT.event_time_ms)) == EVENT
