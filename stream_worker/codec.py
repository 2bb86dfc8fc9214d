"""Avro at the edge: bytes in, typed records out (and back). Nothing else sees bytes.

Two wire formats for values (DESIGN.md):

* Avro single-object encoding (default): `C3 01`, the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's Parsing Canonical Form, then the binary body. Any Avro
  library can produce it without a schema registry.
* Confluent Schema Registry framing (`00` + 4-byte schema id) when a registry URL is set,
  through confluent-kafka's own serdes.

Timestamps stay plain epoch milliseconds (ints) inside the worker: the schemas declare
`timestamp-millis`, but converting every event to a `datetime` and back buys nothing here.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

# The Avro schemas ship inside the package (a link to schemas/ in a checkout, files in the wheel).
SCHEMA_DIR = Path(str(resources.files("stream_worker") / "schemas"))
USER_EVENT = "user_event"
RECOMMENDATION = "recommendation"
MODEL_UPDATE = "model_update"

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_FINGERPRINT = struct.Struct("<Q")  # CRC-64-AVRO, little-endian, per the Avro spec
_HEADER_LEN = len(SINGLE_OBJECT_MAGIC) + _FINGERPRINT.size


class DecodeError(Exception):
    """A record's bytes are not a valid value of the expected schema."""


class InvalidEvent(Exception):
    """A record decoded, but breaks a rule the schema cannot express (e.g. empty user_id)."""


@dataclass(frozen=True, slots=True)
class UserEvent:
    event_id: str
    user_id: str
    item_id: str
    event_type: str
    value: float | None
    event_time_ms: int
    context: dict[str, str] | None = None


@cache
def schema_json(name: str) -> dict[str, Any]:
    """The schema `schemas/<name>.avsc` as JSON (the contract, read from disk once)."""
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())


def _without_logical_types(node: Any) -> Any:
    """Copy of a schema with `logicalType` dropped: the same wire format, read as raw longs."""
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


def _millis(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return value


def avro_long(value: int) -> bytes:
    """Avro long: zig-zag, then a little-endian base-128 varint (for the hand-written batch encoders)."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(value: str) -> bytes:
    """Avro string: its UTF-8 length as a long, then the bytes."""
    data = value.encode()
    return avro_long(len(data)) + data


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """One zig-zag varint (Avro int/long) at `pos`: (value, next position)."""
    shift = result = 0
    while True:
        if pos >= len(data):
            raise DecodeError("Avro body ends inside a number")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise DecodeError("Avro number longer than 10 bytes")


_FIXED_WIDTH = {"null": 0, "boolean": 1, "float": 4, "double": 8}
Walk = Callable[[bytes, int], int]  # walks one value at a position; returns the position after it


def _skip_long(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:  # continuation bit: more bytes follow
        pos += 1
    return pos + 1


def _skip_string(data: bytes, pos: int) -> int:
    byte = data[pos]
    if byte < 0x80:  # a length below 64 fits in one byte: the common case, without a call
        return pos + 1 + ((byte >> 1) ^ -(byte & 1))
    length, pos = _read_long(data, pos)
    return pos + length


def _index(data: bytes, pos: int, n: int, what: str) -> tuple[int, int]:
    index, pos = _read_long(data, pos)
    if not 0 <= index < n:
        raise DecodeError(f"{what} index {index} out of range 0..{n - 1}")
    return index, pos


def _walker(schema: Any) -> Walk:
    """A function that walks one value of `schema` (a parsed fastavro schema), checking every
    enum and union index. Built once per schema out of closures, so that a record costs a call
    per field rather than a reading of the schema per field."""
    if isinstance(schema, list):  # union
        branches = [_walker(branch) for branch in schema]

        def union(data: bytes, pos: int) -> int:
            index, pos = _index(data, pos, len(branches), "union branch")
            return branches[index](data, pos)

        return union
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind in _FIXED_WIDTH or kind == "fixed":
        width = _FIXED_WIDTH[kind] if kind in _FIXED_WIDTH else schema["size"]
        return lambda _data, pos: pos + width
    if kind in ("int", "long"):
        return _skip_long
    if kind in ("string", "bytes"):
        return _skip_string
    if kind == "enum":
        n, what = len(schema["symbols"]), f"enum {schema['name']}"
        return lambda data, pos: _index(data, pos, n, what)[1]
    if kind == "record":
        fields = tuple(_walker(field["type"]) for field in schema["fields"])

        def record(data: bytes, pos: int) -> int:
            for walk in fields:
                pos = walk(data, pos)
            return pos

        return record
    if kind in ("array", "map"):
        items = _walker(schema["items" if kind == "array" else "values"])
        keyed = kind == "map"

        def blocks(data: bytes, pos: int) -> int:
            while True:
                count, pos = _read_long(data, pos)
                if count == 0:
                    return pos
                if count < 0:  # a block with its size in bytes follows the (negated) count
                    count = -count
                    pos = _skip_long(data, pos)
                for _ in range(count):
                    if keyed:
                        pos = _skip_string(data, pos)
                    pos = items(data, pos)

        return blocks
    raise ValueError(f"unsupported Avro type {kind!r}")  # named references do not occur in our schemas


def check_indexes(walk: Walk, data: bytes, start: int) -> None:
    """fastavro reads a negative enum or union index as Python does, from the end of the list
    (-1 becomes the last symbol), so a corrupt value can decode as a different, valid one.
    No library option refuses that; this walk over the same bytes does (a few microseconds)."""
    try:
        walk(data, start)
    except IndexError:
        raise DecodeError("Avro body ends inside a value") from None


class Codec(Protocol):
    def encode(self, record: dict[str, Any]) -> bytes: ...

    def decode(self, data: bytes) -> dict[str, Any]: ...


class SingleObjectCodec:
    """Avro single-object encoding with fastavro.

    fastavro computes the fingerprint but has no single-object framing, and the framing is
    ten bytes: hand-written here rather than pulling in a second Avro library.
    """

    def __init__(self, name: str) -> None:
        raw = _without_logical_types(schema_json(name))
        self._schema = fastavro.parse_schema(raw)
        # fastavro spells the fingerprint as the hex of its 8 bytes in little-endian order,
        # which is exactly what goes on the wire.
        fingerprint_le = bytes.fromhex(fingerprint(to_parsing_canonical_form(self._schema), "CRC-64-AVRO"))
        (self.fingerprint,) = _FINGERPRINT.unpack(fingerprint_le)
        self._header = SINGLE_OBJECT_MAGIC + fingerprint_le
        # Writer schemas we can read, by fingerprint. Older versions of a schema go here as
        # they evolve, decoded with the current one as reader schema.
        self._writers = {self.fingerprint: self._schema}
        self._walks = {fp: _walker(schema) for fp, schema in self._writers.items()}

    def encode(self, record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(self._header)
        fastavro.schemaless_writer(out, self._schema, record)
        return out.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < _HEADER_LEN or data[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError(
                f"not Avro single-object encoded: expected header C3 01, got {data[:2].hex(' ') or 'nothing'}"
            )
        (writer_fp,) = _FINGERPRINT.unpack_from(data, 2)
        writer = self._writers.get(writer_fp)
        if writer is None:
            raise DecodeError(f"unknown writer schema fingerprint {writer_fp:016x}")
        body = io.BytesIO(data[_HEADER_LEN:])
        try:
            record = fastavro.schemaless_reader(body, writer, self._schema)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ... on bad bytes
            raise DecodeError(f"Avro body does not match the schema: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(data) - _HEADER_LEN:
            raise DecodeError(f"{len(data) - _HEADER_LEN - body.tell()} trailing bytes after the Avro body")
        check_indexes(self._walks[writer_fp], data, _HEADER_LEN)
        assert isinstance(record, dict), "a record schema decodes to a dict"
        return record


class RegistryCodec:
    """Confluent wire format through confluent-kafka's serdes and a Schema Registry.

    The serdes (and their HTTP/OAuth dependencies) are imported only when a registry is used.
    """

    def __init__(self, name: str, registry: Any, topic: str) -> None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        schema_str = json.dumps(schema_json(name))
        self._serializer = AvroSerializer(registry, schema_str, conf={"auto.register.schemas": True})
        self._deserializer = AvroDeserializer(registry, schema_str)
        self._ctx = SerializationContext(topic, MessageField.VALUE)

    def encode(self, record: dict[str, Any]) -> bytes:
        return self._serializer(record, self._ctx)

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            record = self._deserializer(data, self._ctx)
        except Exception as exc:  # SerializationError, or fastavro's errors on a bad body
            raise DecodeError(f"not a valid Schema Registry Avro value: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError("Schema Registry value decoded to a non-record")
        return {k: _millis(v) for k, v in record.items()}


def make_codec(name: str, topic: str, registry_url: str | None) -> Codec:
    if registry_url:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return RegistryCodec(name, SchemaRegistryClient.new_client({"url": registry_url}), topic)
    return SingleObjectCodec(name)


# --- user events --------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRules:
    """What a decoded event must satisfy beyond its schema (settings: max_id_length, max_clock_skew_s)."""

    max_id_length: int = 256
    max_clock_skew_ms: int = 5 * 60 * 1000  # how far in the future an event_time may lie
    clock_ms: Any = None  # () -> now in epoch ms; None = the system clock


def to_user_event(record: dict[str, Any], key: bytes | None, rules: EventRules = EventRules()) -> UserEvent:
    """Typed event from a decoded record, or InvalidEvent naming the broken rule."""
    for field in ("event_id", "user_id", "item_id"):
        if not record[field]:
            raise InvalidEvent(f"{field} is empty")
        if len(record[field]) > rules.max_id_length:
            raise InvalidEvent(f"{field} has {len(record[field])} characters, more than {rules.max_id_length}")
    try:
        key_text = None if key is None else key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(f"record key {(key or b'')[:64]!r} is not valid UTF-8; it must be the user id") from None
    if key_text != record["user_id"]:
        raise InvalidEvent(
            f"record key {key_text!r:.80} must be the user id {record['user_id']!r:.80} (one user, one partition)"
        )
    value = record["value"]
    if record["event_type"] == "RATING" and (value is None or not 0 <= value <= 5):
        raise InvalidEvent(f"a RATING needs a value between 0 and 5, got {value!r}")
    if record["event_time"] < 0:
        raise InvalidEvent(f"event_time {record['event_time']} is before 1970")
    now_ms = rules.clock_ms() if rules.clock_ms else int(time.time() * 1000)
    if record["event_time"] > now_ms + rules.max_clock_skew_ms:
        raise InvalidEvent(
            f"event_time {record['event_time']} is {(record['event_time'] - now_ms) / 1000:.0f}s in the future "
            f"(more than the allowed clock skew of {rules.max_clock_skew_ms / 1000:.0f}s)"
        )
    return UserEvent(
        event_id=record["event_id"],
        user_id=record["user_id"],
        item_id=record["item_id"],
        event_type=record["event_type"],
        value=value,
        event_time_ms=int(record["event_time"]),
        context=record.get("context"),
    )


def from_user_event(event: UserEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "event_type": event.event_type,
        "value": event.value,
        "event_time": event.event_time_ms,
        "context": event.context,
    }
