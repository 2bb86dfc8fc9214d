"""Publishing: recommendation records and dead letters onto their topics, with delivery tracking.

Records are grouped into *flushes*. Everything produced between two `seal()` calls belongs to
one flush, together with the consumed offsets it answers for. A flush is complete when the
broker has acknowledged every one of its records; `committable()` hands out the offsets of the
complete flushes at the head of the queue, in order, so an offset is never committed before
every record produced for the records behind it is acknowledged (at-least-once), and nothing
after a failed record is committed until that record has been produced again and acknowledged.

No produce error stops the worker. A refused record is counted, logged (once a minute at most)
and produced again after a back-off, while offsets behind it wait. A dead letter too large for
the DLQ is truncated to fit, with its original size and SHA-256 in headers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream_worker.codec import Codec
from stream_worker.metrics import WorkerMetrics
from stream_worker.worker import changelog
from stream_worker.worker.encoders import RecommendationEncoder
from stream_worker.worker.inference import Ranked
from stream_worker.worker.state import StateBatch, UserState

log = logging.getLogger(__name__)

# Headers of a dead letter; the original key, value and headers are kept as they were.
DLQ_REASON = "streamrec.error.reason"  # "decode" | "invalid"
DLQ_MESSAGE = "streamrec.error.message"
DLQ_TOPIC = "streamrec.source.topic"
DLQ_PARTITION = "streamrec.source.partition"
DLQ_OFFSET = "streamrec.source.offset"
# ... and when the original did not fit the DLQ's size limit:
DLQ_TRUNCATED = "streamrec.truncated"  # what was cut: "value", "key,value", "headers,value", ...
DLQ_ORIGINAL_SIZE = "streamrec.original.value.size"
DLQ_ORIGINAL_SHA256 = "streamrec.original.value.sha256"
DLQ_ORIGINAL_KEY_SIZE = "streamrec.original.key.size"

DEFAULT_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's own default limit for one record
_RECORD_OVERHEAD = 512  # bytes a record's framing may add beyond key, value and headers
RETRY_BACKOFF_S = 1.0
_SIZE_ERRORS = (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)


@dataclass
class _Record:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] | None
    kind: str  # "recommendations" | "dlq" | "state"
    last_event_ms: int = 0  # recommendations: for the latency histogram
    dlq_reason: str = ""
    partition: int = -1  # -1 = the producer's partitioner decides (by key)


@dataclass
class Flush:
    """Records produced together, and the consumed offsets ((topic, partition) -> next offset) they answer for."""

    outstanding: int = 0  # produced, not yet acknowledged
    failed: list[_Record] = field(default_factory=list)  # refused; produced again after a back-off
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    sealed: bool = False

    @property
    def complete(self) -> bool:
        return self.sealed and self.outstanding == 0 and not self.failed


class Publisher:
    def __init__(
        self,
        producer: Producer,
        codec: Codec,
        *,
        recommendations_topic: str,
        dlq_topic: str,
        metrics: WorkerMetrics,
        state_topic: str = "user-state",
        source_topic: str = "user-events",
        dlq_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
        transactional: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._producer = producer
        self._encoder = RecommendationEncoder(codec)
        self._recommendations_topic = recommendations_topic
        self._dlq_topic = dlq_topic
        self._state_topic = state_topic
        self._changelog = changelog.ChangelogEncoder(source_topic)
        self.transactional = transactional
        # Called before every produce; the transactional commit strategy begins its transaction there.
        self.before_produce: Callable[[], None] | None = None
        self._metrics = metrics
        self.dlq_max_bytes = dlq_max_bytes
        self._clock = clock
        self._open = Flush()  # collects records until the next seal()
        self._sealed: deque[Flush] = deque()
        self._retry_at = 0.0
        self._last_error_log = 0.0

    # --- producing ------------------------------------------------------------------------

    def recommendations(self, batch: StateBatch, ranked: Ranked, *, model_name: str, model_version: int) -> None:
        values = self._encoder.encode(
            batch, ranked, model_name=model_name, model_version=model_version, generated_at=int(self._clock() * 1000)
        )
        for user_id, value, last_event_ms in zip(batch.user_ids, values, batch.last_event_ms.tolist(), strict=True):
            record = _Record(
                self._recommendations_topic,
                user_id.encode(),
                value,
                None,
                "recommendations",
                last_event_ms=last_event_ms,
            )
            self._produce(self._open, record)

    def dead_letter(self, msg: Message, reason: str, error: str) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            *((str(header[0]), header[1]) for header in msg.headers() or []),
            (DLQ_REASON, reason.encode()),
            (DLQ_MESSAGE, error[:2000].encode("utf-8", "replace")),
            (DLQ_TOPIC, (msg.topic() or "").encode()),
            (DLQ_PARTITION, str(msg.partition()).encode()),
            (DLQ_OFFSET, str(msg.offset()).encode()),
        ]
        log.warning("dead letter %s[%s]@%s (%s): %.300s", msg.topic(), msg.partition(), msg.offset(), reason, error)
        record = _Record(self._dlq_topic, msg.key(), msg.value(), headers, "dlq", dlq_reason=reason)
        self._produce(self._open, self._fit(record, self.dlq_max_bytes))

    def state(self, state: UserState, user_ids: list[str]) -> None:
        """Each user's state onto the changelog, on the partition number their events came from."""
        for user_id, (partition, value) in zip(user_ids, self._changelog.encode(state, user_ids), strict=True):
            record = _Record(self._state_topic, user_id.encode(), value, None, "state", partition=partition)
            self._produce(self._open, record)

    def forget(self, user_id: str, partition: int) -> None:
        """Tombstones for a forgotten user: their state and their list, so compaction erases both."""
        key = user_id.encode()
        self._produce(self._open, _Record(self._state_topic, key, None, None, "state", partition=partition))
        self._produce(self._open, _Record(self._recommendations_topic, key, None, None, "state"))

    def seal(self, offsets: dict[tuple[str, int], int]) -> None:
        """Close the open flush: its records answer for `offsets` (consumed since the last seal)."""
        flush, self._open = self._open, Flush()
        flush.offsets = dict(offsets)
        flush.sealed = True
        self._sealed.append(flush)

    # --- acknowledgements -----------------------------------------------------------------

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery callbacks; produce refused records again once their back-off is over."""
        self._producer.poll(timeout_s)
        if not self.transactional and self._clock() >= self._retry_at:  # (a transaction aborts instead)
            for flush in (*self._sealed, self._open):
                retry, flush.failed = flush.failed, []
                for record in retry:
                    self._produce(flush, record)
        self._metrics.in_flight_records.set(self.in_flight)

    def committable(self) -> dict[tuple[str, int], int]:
        """Offsets of the complete flushes at the head of the queue (removed from it), newest per partition."""
        offsets: dict[tuple[str, int], int] = {}
        while self._sealed and self._sealed[0].complete:
            offsets.update(self._sealed.popleft().offsets)
        return offsets

    def wait_all(self, timeout_s: float) -> bool:
        """Wait until every sealed flush is complete (True), or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while any(not f.complete for f in self._sealed):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.poll(min(0.1, remaining))
        return True

    def sealed_offsets(self) -> dict[tuple[str, int], int]:
        """Exactly-once: the offsets the sealed flushes answer for, newest per partition."""
        offsets: dict[tuple[str, int], int] = {}
        for flush in self._sealed:
            offsets.update(flush.offsets)
        return offsets

    def committed(self) -> None:
        """Exactly-once: the transaction holding the sealed flushes committed; they are done."""
        self._sealed.clear()

    def reset(self) -> None:
        """Forget every flush (after an aborted transaction: none of it happened)."""
        self._open, self._sealed = Flush(), deque()

    def drop_partitions(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions lost to another worker: never commit their offsets from here."""
        for flush in self._sealed:
            for tp in partitions:
                flush.offsets.pop(tp, None)

    @property
    def in_flight(self) -> int:
        """Records produced and not yet acknowledged (refused ones included)."""
        return sum(f.outstanding for f in (*self._sealed, self._open))

    @property
    def refused(self) -> int:
        """Records refused by the broker and waiting to be produced again."""
        return sum(len(f.failed) for f in (*self._sealed, self._open))

    # --- internals ------------------------------------------------------------------------

    def _produce(self, flush: Flush, record: _Record) -> None:
        flush.outstanding += 1  # counted until acknowledged; a refusal keeps it counted
        if self.before_produce is not None:
            self.before_produce()  # exactly-once: Step 1, the transaction begins
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    record.value,
                    record.key,
                    # -1: librdkafka's RD_KAFKA_PARTITION_UA, the partitioner picks (by key)
                    partition=record.partition,
                    headers=list(record.headers or ()),
                    on_delivery=partial(self._on_delivery, flush, record),
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
            except KafkaException as exc:  # refused before it left: e.g. too large for the producer
                self._refused(flush, record, exc.args[0])
                return

    def _on_delivery(self, flush: Flush, record: _Record, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._refused(flush, record, err)
            return
        flush.outstanding -= 1
        if record.kind == "recommendations":
            self._metrics.recommendations.inc()
            self._metrics.event_to_recommendation.observe(max(self._clock() - record.last_event_ms / 1000, 0.0))
        elif record.kind == "dlq":
            self._metrics.dead_letters.labels(record.dlq_reason).inc()

    def _refused(self, flush: Flush, record: _Record, err: KafkaError) -> None:
        self._metrics.produce_errors.labels(record.kind, err.name()).inc()
        if record.kind == "dlq" and err.code() in _SIZE_ERRORS:
            # The topic's limit is lower than we knew: halve what we send until it fits.
            self.dlq_max_bytes = max(1024, min(self.dlq_max_bytes, _size(record)) // 2)
            record = self._fit(record, self.dlq_max_bytes)
        now = self._clock()
        if now - self._last_error_log >= 60:
            self._last_error_log = now
            log.error(
                "the broker refused a record for %s (%s); it is produced again every %.0fs and no offset "
                "behind it is committed until it is acknowledged",
                record.topic,
                err.str(),
                RETRY_BACKOFF_S,
            )
        flush.outstanding -= 1  # _produce counts it again when it is retried
        flush.failed.append(record)
        self._retry_at = now + RETRY_BACKOFF_S

    def _fit(self, record: _Record, limit: int) -> _Record:
        """The dead letter itself if it fits in `limit` bytes; else its value (then key) cut to fit,
        with the original sizes and the value's SHA-256 in headers so nothing is silently lost."""
        if _size(record) <= limit:
            return record
        key, value = record.key or b"", record.value or b""
        marks = [
            (DLQ_ORIGINAL_SIZE, str(len(value)).encode()),
            (DLQ_ORIGINAL_SHA256, hashlib.sha256(value).hexdigest().encode()),
            (DLQ_ORIGINAL_KEY_SIZE, str(len(key)).encode()),
        ]
        headers = [*(record.headers or []), *marks, (DLQ_TRUNCATED, b"key,value")]
        room = limit - _size(_Record(record.topic, b"", b"", headers, "dlq"))
        cut = []
        if room < limit // 4:  # the original headers alone nearly fill the limit: keep only ours
            headers = [h for h in headers if h[0].startswith("streamrec.")]
            room = limit - _size(_Record(record.topic, b"", b"", headers, "dlq"))
            cut = ["headers"]
        if len(key) > room // 2:
            key, cut = key[: room // 2], ["key"]
        if len(value) > room - len(key):
            value, cut = value[: max(room - len(key), 0)], [*cut, "value"]
        headers[-1] = (DLQ_TRUNCATED, ",".join(cut).encode())
        self._metrics.dead_letters_truncated.inc()
        log.warning("dead letter for %s cut to %d bytes to fit the DLQ (%s)", record.topic, limit, ", ".join(cut))
        return _Record(record.topic, key, value, headers, "dlq", dlq_reason=record.dlq_reason)


def _size(record: _Record) -> int:
    headers = sum(len(k) + len(v or b"") for k, v in record.headers or [])
    return len(record.key or b"") + len(record.value or b"") + headers + _RECORD_OVERHEAD
