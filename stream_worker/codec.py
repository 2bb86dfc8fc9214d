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
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
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


def to_user_event(record: dict[str, Any], key: bytes | None) -> UserEvent:
    """Typed event from a decoded record, or InvalidEvent naming the broken rule."""
    for field in ("event_id", "user_id", "item_id"):
        if not record[field]:
            raise InvalidEvent(f"{field} is empty")
    if key is None or key.decode("utf-8", "replace") != record["user_id"]:
        raise InvalidEvent(f"record key {key!r} must be the user id {record['user_id']!r} (one user, one partition)")
    value = record["value"]
    if record["event_type"] == "RATING" and (value is None or not 0 <= value <= 5):
        raise InvalidEvent(f"a RATING needs a value between 0 and 5, got {value!r}")
    if record["event_time"] < 0:
        raise InvalidEvent(f"event_time {record['event_time']} is before 1970")
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
