"""The worker: its loop and its lifecycle, one call per stage, in data-flow order.

    [new model verified? swap it in] -> [acks arrived? commit their offsets] -> poll
         -> decode (bad record -> dead-letter topic) -> state -> batcher
         -> [nothing more arrived, or batch full] inference -> publish (sealed with its offsets)

Delivery is at-least-once: an offset is committed only after every record produced for the
records behind it (recommendation or dead letter) is acknowledged by the broker. The loop does
not wait for acknowledgements: it seals each flush with its offsets and commits flushes as their
acknowledgements arrive, in order (`Publisher.committable`). A crash replays from the last
commit; a clean stop (SIGTERM/SIGINT) or a rebalance finishes, publishes and commits what it
holds, waiting at most `flush_timeout_s` for the broker.

The broker being away never stops the worker: producers retry without a deadline, nothing is
committed meanwhile, the loop keeps turning (/healthz) and /readyz says why it is not ready.

Longer than 400 lines because it is the one class whose methods are the loop and its Kafka callbacks
(assign, revoke, lost, errors); every stage they call lives in its own module.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any

import torch
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import ConfigResource
from prometheus_client import CollectorRegistry

from models import checkpoint, pick_device
from stream_worker import metrics as metrics_module
from stream_worker.channel.watcher import ModelWatcher
from stream_worker.codec import (
    RECOMMENDATION,
    USER_EVENT,
    DecodeError,
    EventRules,
    InvalidEvent,
    UserEvent,
    make_codec,
    to_user_event,
)
from stream_worker.config import Settings
from stream_worker.kafka.clients import ThrottledLog, new_admin, new_consumer, new_producer, position
from stream_worker.kafka.stats import ConsumerStats
from stream_worker.metrics import WorkerMetrics
from stream_worker.worker import changelog
from stream_worker.worker.batching import MicroBatcher
from stream_worker.worker.commit import TopicKey, make_strategy
from stream_worker.worker.inference import Inference
from stream_worker.worker.online_eval import OnlineEvaluator
from stream_worker.worker.publish import DEFAULT_MESSAGE_MAX_BYTES, Publisher
from stream_worker.worker.state import UserState

log = logging.getLogger(__name__)

# A loop turn that has not finished for this long means the worker is stuck (/healthz fails).
STALL_LIMIT_S = 60.0
# How often the worker checks that the cluster answers, and how often it says so when not.
PROBE_INTERVAL_S = 5.0


class StopIncomplete(Exception):
    """A stop could not get everything acknowledged in time; the uncommitted events will be replayed."""


class Worker:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        if settings.model_dir is None:
            raise ValueError("the worker needs a model: pass --model DIR or set STREAMREC_MODEL_DIR")
        self.settings = settings
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        self.stop = threading.Event()
        self.device = pick_device(settings.device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        loaded = checkpoint.load(settings.model_dir, self.device)
        self.state = UserState(
            max_users=settings.state_max_users,
            recent_items=settings.state_recent_items,
            event_weights=settings.event_weights,
            decay_half_life_s=settings.decay_half_life_s,
            max_items=settings.state_max_items,
        )
        self.inference = Inference(loaded, self.state.items, self.device, settings.top_k)
        self.online = OnlineEvaluator(settings.top_k, settings.state_max_users, self.metrics.registry)
        self.batcher = MicroBatcher(
            settings.max_flush_users, settings.max_batch_wait_ms / 1000, chunk_size=settings.max_batch_size
        )
        self.codec = make_codec(USER_EVENT, settings.events_topic, settings.schema_registry_url)
        self.rules = EventRules(
            max_id_length=settings.max_id_length, max_clock_skew_ms=int(settings.max_clock_skew_s * 1000)
        )
        # Consumed since the last flush: (topic, partition) -> the next offset to read.
        self.pending_offsets: dict[TopicKey, int] = {}
        self.assigned: set[TopicKey] = set()
        self.exactly_once = settings.processing_guarantee == "exactly-once"
        self.restoring = False
        self.kafka_reachable = threading.Event()
        self.metrics.model_version.set(loaded.metadata.version)
        self._loaded = loaded
        # --- operations: build info, and lag/assignment/rebalances from librdkafka's statistics
        self.metrics.build_info.info(metrics_module.build_labels(loaded.metadata.kind))
        self.consumer_stats = ConsumerStats(self.metrics, settings.kafka_stats_interval_ms)
        self._last_turn = time.monotonic()
        self._throttled = ThrottledLog(log)
        self._fatal: KafkaError | None = None
        self._running = False
        self._broken = False
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            # librdkafka repeats every connection failure; error_cb reports them once a minute instead.
            logging.getLogger("librdkafka").setLevel(logging.CRITICAL)
        log.info(
            "serving %s v%d (%d items) on %s",
            loaded.metadata.name,
            loaded.metadata.version,
            loaded.model.n_items,
            self.device,
        )

    # --- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until `stop` is set, then finish what is held and leave the group."""
        settings = self.settings
        with ExitStack() as resources:
            self._open(resources)
            self.consumer.subscribe(
                [settings.events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            self._running = True
            try:
                while not self.stop.is_set():
                    self._turn()
                finished = self._finish_in_flight()  # the batch in flight: published, acknowledged, committed
            except BaseException:
                # Leave the group without publishing or committing anything more: the
                # uncommitted records are replayed by whoever takes the partitions.
                self._broken = True
                raise
            finally:
                self._running = False
            if not finished:
                raise StopIncomplete(
                    f"{self.publisher.in_flight} records still unacknowledged after {settings.flush_timeout_s:.0f}s"
                    " (STREAMREC_FLUSH_TIMEOUT_S); their events stay uncommitted and will be replayed"
                )
        # Only once the clients are closed (a second Ctrl+C during the close exits before this line).
        log.info("stopped cleanly; all consumed events are published and committed")

    def _open(self, resources: ExitStack) -> None:
        """Clients, publisher, model watcher, Kafka probe and HTTP endpoint, closed by `resources`."""
        settings = self.settings
        self.producer = self._new_producer()
        resources.callback(self.producer.flush, 5)  # a last chance for anything left
        self.publisher = Publisher(
            self.producer,
            make_codec(RECOMMENDATION, settings.recommendations_topic, settings.schema_registry_url),
            recommendations_topic=settings.recommendations_topic,
            dlq_topic=settings.dlq_topic,
            state_topic=settings.state_topic,
            source_topic=settings.events_topic,
            metrics=self.metrics,
            dlq_max_bytes=settings.dlq_max_bytes or self._learn_dlq_limit(),
            transactional=self.exactly_once,
        )
        if self.exactly_once:
            self._init_transactions()
        self.consumer = self._new_consumer()
        resources.callback(self.consumer.close)  # leaves the group; runs after the final flush
        self.commit = make_strategy(
            self.exactly_once,
            producer=self.producer,
            consumer=self.consumer,
            publisher=self.publisher,
            commit_interval_s=settings.commit_interval_ms / 1000,
            rewind=self._rewind,
        )
        self.watcher = self._new_watcher()
        resources.callback(self.watcher.close)
        self.metrics.model_watcher_alive.set_function(lambda: float(self.watcher.alive()))
        self._start_probe()
        if settings.metrics_port:
            server = metrics_module.serve(
                self.metrics.registry,
                settings.metrics_host,
                settings.metrics_port,
                healthy=self.healthy,
                ready=self.ready,
            )
            resources.callback(server.shutdown)

    def healthy(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self._last_turn
        return stalled < STALL_LIMIT_S, f"last loop turn {stalled:.1f}s ago"

    def ready(self) -> tuple[bool, str]:
        if not self._running:
            return False, "not running"
        if self.restoring:
            return False, "restoring user state"
        if not self.kafka_reachable.is_set():
            return False, f"cannot reach Kafka at {self.settings.bootstrap_servers}"
        if not self.assigned:
            return False, "no partitions assigned"
        if not self.watcher.alive():
            return False, "the model watcher is not running"
        if self.publisher.refused:
            return False, f"{self.publisher.refused} records refused by the broker, retrying"
        return True, f"serving {self.inference.model_name} v{self.inference.model_version}"

    # --- the loop --------------------------------------------------------------------------

    def _turn(self) -> None:
        self._last_turn = time.monotonic()
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        # A newly announced model takes over between batches, never inside one.
        self._swap_model_if_announced()
        # Step 5. acknowledgements that arrived complete earlier flushes: commit their offsets.
        self.publisher.poll()
        if not self.commit.due():
            return  # exactly-once: the broker has not confirmed the transaction yet; take nothing new
        if self.publisher.in_flight >= self.settings.max_in_flight_records:
            self.publisher.poll(0.1)  # the broker is slow or away: let it catch up before taking more
            return
        msgs = self._poll()
        if msgs:
            self._ingest(msgs)
        # Greedy batching: a poll that did not fill up took everything that had arrived, so score
        # it now. A full poll means the worker is behind (a backlog): keep taking records, and
        # each user's events are scored once, up to max_flush_users users or max_batch_wait_ms.
        caught_up = len(msgs) < self.settings.poll_max_records
        if self.batcher.pending and (caught_up or self.batcher.due()):
            self._flush()

    def _poll(self) -> list[Message]:
        """The records that have arrived. While work is pending, never wait; when idle, block for
        the first record only (consume(n, t) would wait for n records or the whole timeout)."""
        n = self.settings.poll_max_records
        if self.batcher.pending:
            return self.consumer.consume(n, timeout=0)
        # Waiting for acknowledgements? Come back soon to serve them (and commit); else rest longer.
        first = self.consumer.consume(1, timeout=0.005 if self.publisher.in_flight else 0.1)
        return first + self.consumer.consume(n - 1, timeout=0) if first else first

    def _ingest(self, msgs: list[Message]) -> None:
        started = time.perf_counter()
        # Step 1. decode; a record that cannot be used goes to the dead-letter topic, and a
        # tombstone (null value) is a request to forget its user.
        events: list[tuple[UserEvent, int, int]] = []
        for msg in msgs:
            if (error := msg.error()) is not None:
                self._on_consume_error(error)
                continue
            topic, partition, offset = position(msg)
            self.pending_offsets[(topic, partition)] = offset + 1
            if msg.value() is None and msg.key():
                self._apply(events)  # what came before the tombstone happened before it
                events = []
                self._forget_user(msg)
                continue
            try:
                event = to_user_event(self.codec.decode(msg.value() or b""), msg.key(), self.rules)
                events.append((event, partition, offset))
            except DecodeError as exc:
                self.publisher.dead_letter(msg, "decode", str(exc))
            except InvalidEvent as exc:
                self.publisher.dead_letter(msg, "invalid", str(exc))
        self.metrics.stage.labels("decode").observe(time.perf_counter() - started)
        self._apply(events)
        self.batcher.note_pending()  # also when no user changed: offsets await a commit

    def _apply(self, events: list[tuple[UserEvent, int, int]]) -> None:
        """Step 2. apply to the rolling state; the users that changed wait for the next flush."""
        started = time.perf_counter()
        before = self.state.evicted_total, self.state.items_dropped_total, self.state.replayed_total
        self.batcher.add(self.state.apply(events))
        self.online.observe(events, self.state.items)  # hit-rate of the lists sent before these events
        self.metrics.stage.labels("state").observe(time.perf_counter() - started)
        replayed = self.state.replayed_total - before[2]
        self.metrics.events.inc(len(events) - replayed)
        self.metrics.events_replayed.inc(replayed)
        self.metrics.users_in_state.set(len(self.state))
        self.metrics.users_evicted.inc(self.state.evicted_total - before[0])
        self.metrics.items_in_state.set(len(self.state.items))
        self.metrics.items_dropped.inc(self.state.items_dropped_total - before[1])

    def _forget_user(self, msg: Message) -> None:
        """A tombstone on the events topic: drop the user's state and tombstone their state and list."""
        try:
            user_id = (msg.key() or b"").decode("utf-8")
        except UnicodeDecodeError:
            self.publisher.dead_letter(msg, "invalid", "a tombstone's key must be a UTF-8 user id")
            return
        self.state.forget(user_id)
        self.batcher.discard([user_id])
        self.publisher.forget(user_id, position(msg)[1])
        self.metrics.users_forgotten.inc()
        self.metrics.users_in_state.set(len(self.state))
        log.info(
            "forgot user %.80s (deletion request at %s[%d]@%d)", user_id, msg.topic(), msg.partition(), msg.offset()
        )

    def _flush(self) -> None:
        if not self.batcher.pending:
            return
        self.metrics.stage.labels("batch_wait").observe(self.batcher.waited_s())
        chunks = self.batcher.drain()
        # Step 3. score and publish each chunk of at most max_batch_size users.
        for user_ids in chunks:
            started = time.perf_counter()
            batch = self.state.batch(user_ids)
            ranked = self.inference.recommend(batch)
            scored = time.perf_counter()
            self.publisher.recommendations(
                batch, ranked, model_name=self.inference.model_name, model_version=self.inference.model_version
            )
            self.publisher.state(self.state, user_ids)  # the changelog
            self.online.sent(batch, ranked.item_ids, self.inference.model_version)
            self.metrics.stage.labels("inference").observe(scored - started)
            self.metrics.stage.labels("publish").observe(time.perf_counter() - scored)
            self.metrics.batch_size.observe(len(user_ids))
        # Step 4. what was just produced (and any dead letters since the last flush) answers
        # for the offsets consumed since then; they are committed once it is all acknowledged.
        self.publisher.seal(self.pending_offsets)
        self.pending_offsets = {}
        self.commit.flushed()  # exactly-once: lists, state and offsets become visible together, or not at all

    def _rewind(self, why: str) -> None:
        """Exactly-once after an abort: none of the transaction happened, so drop what the state
        learnt since the last commit (restore it from the changelog) and read again from the
        committed offsets."""
        log.warning("%s; rewinding to the committed offsets", why)
        self.metrics.transactions_aborted.inc()
        self.batcher.drain()
        self.pending_offsets = {}
        partitions = [TopicPartition(t, p) for t, p in sorted(self.assigned)]
        self.batcher.discard(self.state.forget_partitions({tp.partition for tp in partitions}))
        self._restore(partitions)
        restart = OFFSET_BEGINNING if self.settings.auto_offset_reset == "earliest" else OFFSET_END
        for tp in self.consumer.committed(partitions, timeout=30):
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else restart))

    def _finish_in_flight(self) -> bool:
        """Flush what is held, wait (up to flush_timeout_s) for every acknowledgement, then commit
        synchronously. Returns False if something stayed unacknowledged (it is not committed)."""
        self._flush()
        return self.commit.finish(self.settings.flush_timeout_s)

    def _swap_model_if_announced(self) -> None:
        loaded = self.watcher.take()
        if loaded is None:
            return
        self.inference.swap(loaded)
        self.metrics.model_version.set(loaded.metadata.version)
        self.metrics.build_info.info(metrics_module.build_labels(loaded.metadata.kind))
        self.metrics.model_swaps.inc()
        log.info("now serving %s v%d", loaded.metadata.name, loaded.metadata.version)

    # --- rebalancing and errors ---------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """New partitions: their users come back from the changelog before any of their events is read."""
        self.assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self._restore(partitions)

    def _restore(self, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        self.restoring = True
        self.metrics.state_restoring.set(1)
        try:
            restored = changelog.restore(
                self.settings,
                [tp.partition for tp in partitions],
                self.state,
                timeout_s=self.settings.restore_timeout_s,
            )
        finally:
            self.restoring = False
            self.metrics.state_restoring.set(0)
        self.metrics.state_restore.observe(restored.seconds)
        self.metrics.state_restore_records.inc(restored.records)
        self.metrics.state_restored_users.inc(restored.users)
        self.metrics.users_in_state.set(len(self.state))
        log.info(
            "restored %d users of partitions %s from %s in %.2fs (%d records, %.0f users/s)",
            restored.users,
            sorted(tp.partition for tp in partitions),
            self.settings.state_topic,
            restored.seconds,
            restored.records,
            restored.users / max(restored.seconds, 1e-9),
        )

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions are leaving this worker: publish and commit their work while we still can."""
        if not self._broken and not self._finish_in_flight():
            log.warning("revoked partitions left with unacknowledged records; their events will be replayed")
        self._forget(partitions)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions were taken without a chance to commit: their records will be replayed
        elsewhere, so their offsets are dropped; what is held is still published (duplicates
        are harmless: the newest recommendation per user wins)."""
        self._forget(partitions)  # first: their users' state must not be written from here any more
        if not self._broken:
            self._flush()

    def _forget(self, partitions: list[TopicPartition]) -> None:
        """Partitions left this worker: nothing of theirs is committed or written from here any more."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self.publisher.drop_partitions(keys)
        self.commit.forget(keys)
        for key in keys:
            self.pending_offsets.pop(key, None)
            self.assigned.discard(key)
        dropped = self.state.forget_partitions({tp.partition for tp in partitions})
        self.batcher.discard(dropped)
        self.metrics.users_in_state.set(len(self.state))
        log.info("partitions %s left this worker; dropped %d users", [tp.partition for tp in partitions], len(dropped))

    def _on_consume_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        self._throttled.warning("consume", "consumer: %s", error)

    def _on_client_error(self, error: KafkaError) -> None:
        """librdkafka's error callback: fatal errors end the loop; the rest are retried by the
        client and reported once a minute (an unreachable broker says so many times a second)."""
        if error.fatal():
            self._fatal = error
            return
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self.kafka_reachable.clear()
        self._throttled.warning(
            "client",
            "Kafka at %s: %s (retrying; uncommitted work is kept)",
            self.settings.bootstrap_servers,
            error.str(),
        )

    def _probe_kafka(self) -> None:
        """Every few seconds, ask the cluster for metadata: readiness and `kafka_reachable` follow."""
        admin = new_admin(self.settings, **self._client_options())
        while not self.stop.is_set():
            try:
                admin.list_topics(timeout=PROBE_INTERVAL_S)
                self.kafka_reachable.set()
            except KafkaException as exc:
                self.kafka_reachable.clear()
                self._throttled.warning(
                    "probe", "cannot reach Kafka at %s: %s; still retrying", self.settings.bootstrap_servers, exc
                )
            self.metrics.kafka_reachable.set(float(self.kafka_reachable.is_set()))
            self.stop.wait(PROBE_INTERVAL_S)

    # --- clients (overridden by unit tests with fakes) ----------------------------------------

    def _client_options(self) -> dict[str, Any]:
        """Every client of the worker reports errors through `_on_client_error` and logs through Python logging."""
        return {"error_cb": self._on_client_error, "logger": logging.getLogger("librdkafka")}

    def _new_producer(self) -> Producer:
        overrides = self._client_options()
        if self.exactly_once:
            # One transactional id per live worker; zombies are fenced by the group generation
            # that send_offsets_to_transaction carries (KIP-447), so a fresh id per start is fine.
            overrides["transactional.id"] = f"{self.settings.group_id}.{self.settings.instance_id or uuid.uuid4().hex}"
            # message.timeout.ms must not exceed transaction.timeout.ms; librdkafka's default follows it.
            overrides["message.timeout.ms"] = None
        return new_producer(self.settings, **overrides)

    def _init_transactions(self) -> None:
        """Exactly-once start-up: fence an older producer with our id, retrying while the broker is away."""
        while not self.stop.is_set():
            try:
                self.producer.init_transactions(10)
                return
            except KafkaException as exc:
                if not exc.args[0].retriable():
                    raise
                self._throttled.warning("txn", "cannot initialise transactions yet (%s); retrying", exc)

    def _new_consumer(self) -> Consumer:
        overrides = {
            **self._client_options(),
            "on_commit": lambda err, partitions: self.commit.on_commit(err, partitions),
            "partition.assignment.strategy": "cooperative-sticky",
            "auto.offset.reset": self.settings.auto_offset_reset,
            **self.consumer_stats.consumer_options(),  # lag and assignment metrics
        }
        if self.settings.instance_id:
            # Static membership: a restarted worker with the same id takes its partitions back at
            # once instead of waiting for the session timeout (and a clean stop does not rebalance).
            overrides["group.instance.id"] = self.settings.instance_id
        return new_consumer(self.settings, self.settings.group_id, **overrides)

    def _new_watcher(self) -> ModelWatcher:
        return ModelWatcher(
            self.settings,
            serving=self._loaded.metadata,
            serving_path=self._loaded.path,
            device=self.device,
            metrics=self.metrics,
            seen_items=lambda: list(self.state.items.ids),
        ).start()

    def _start_probe(self) -> None:
        threading.Thread(target=self._probe_kafka, name="kafka-probe", daemon=True).start()

    def _learn_dlq_limit(self) -> int:
        """The DLQ topic's max.message.bytes (capped by the producer's own default limit)."""
        resource = ConfigResource(ConfigResource.Type.TOPIC, self.settings.dlq_topic)
        try:
            admin = new_admin(self.settings, **self._client_options())
            configs = admin.describe_configs([resource], request_timeout=5)[resource].result(timeout=5)
            return min(int(configs["max.message.bytes"].value), DEFAULT_MESSAGE_MAX_BYTES)
        except Exception as exc:  # broker away or topic missing: the default, lowered on refusal
            log.info("could not read the DLQ's max.message.bytes (%s); assuming %d", exc, DEFAULT_MESSAGE_MAX_BYTES)
            return DEFAULT_MESSAGE_MAX_BYTES
