"""The worker: its loop and its lifecycle, one call per stage, in data-flow order.

    [new model announced? swap it in] -> poll -> decode (bad record -> dead-letter topic)
         -> state -> batcher -> [flush due] inference -> publish -> wait for acks -> commit offsets

Delivery is at-least-once: an offset is committed only after every record produced for it
(recommendation or dead letter) is acknowledged by the broker. A crash replays from the
last commit; a clean stop (SIGTERM/SIGINT) finishes, publishes and commits what it holds.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack

import torch
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from models import checkpoint, pick_device
from stream_worker import metrics as metrics_module
from stream_worker.batching import MicroBatcher
from stream_worker.codec import RECOMMENDATION, USER_EVENT, DecodeError, InvalidEvent, make_codec, to_user_event
from stream_worker.config import Settings
from stream_worker.inference import Inference
from stream_worker.kafka_stats import ConsumerStats
from stream_worker.metrics import WorkerMetrics
from stream_worker.model_updates import ModelWatcher
from stream_worker.publish import Publisher, producer_config
from stream_worker.state import UserState

log = logging.getLogger(__name__)

# A loop turn that has not finished for this long means the worker is stuck (/healthz fails).
STALL_LIMIT_S = 60.0


def consumer_config(settings: Settings) -> dict[str, str | int | bool]:
    return {
        **settings.kafka_common(),
        "group.id": settings.group_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.commit": False,  # we commit, after the broker acknowledged our output
        "auto.offset.reset": settings.auto_offset_reset,
    }


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
        )
        self.inference = Inference(loaded, self.state.items, self.device, settings.top_k)
        self.batcher = MicroBatcher(settings.max_batch_size, settings.max_batch_wait_ms / 1000)
        self.codec = make_codec(USER_EVENT, settings.events_topic, settings.schema_registry_url)
        # Consumed but not yet committed: (topic, partition) -> the next offset to read.
        self.pending_offsets: dict[tuple[str, int], int] = {}
        self.metrics.model_version.set(loaded.metadata.version)
        # --- operations (issue 9): build info, and lag/assignment/rebalances from librdkafka's statistics
        self.metrics.build_info.info(metrics_module.build_labels(loaded.metadata.kind))
        self.consumer_stats = ConsumerStats(self.metrics, settings.kafka_stats_interval_ms)
        self._last_turn = time.monotonic()
        self._running = False
        self._broken = False
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
            self.producer = Producer(producer_config(settings.kafka_common()))
            resources.callback(self.producer.flush, 30)
            self.publisher = Publisher(
                self.producer,
                make_codec(RECOMMENDATION, settings.recommendations_topic, settings.schema_registry_url),
                recommendations_topic=settings.recommendations_topic,
                dlq_topic=settings.dlq_topic,
                metrics=self.metrics,
            )
            self.consumer = Consumer({**consumer_config(settings), **self.consumer_stats.consumer_options()})
            resources.callback(self.consumer.close)  # leaves the group; runs after the final flush
            self.watcher = ModelWatcher(
                settings,
                model_name=self.inference.model_name,
                current_version=self.inference.model_version,
                device=self.device,
                metrics=self.metrics,
            ).start()
            resources.callback(self.watcher.close)
            if settings.metrics_port:
                server = metrics_module.serve(
                    self.metrics.registry,
                    settings.metrics_host,
                    settings.metrics_port,
                    healthy=self.healthy,
                    ready=self.ready,
                )
                resources.callback(server.shutdown)

            self.consumer.subscribe([settings.events_topic], on_revoke=self._on_revoke, on_lost=self._on_lost)
            self._running = True
            try:
                while not self.stop.is_set():
                    self._turn()
                self._flush()  # the batch in flight: finished, published, committed
            except BaseException:
                # Leave the group without publishing or committing anything more: the
                # uncommitted records are replayed by whoever takes the partitions.
                self._broken = True
                raise
            finally:
                self._running = False
            log.info("stopped cleanly; all consumed events are published and committed")

    def healthy(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self._last_turn
        return stalled < STALL_LIMIT_S, f"last loop turn {stalled:.1f}s ago"

    def ready(self) -> tuple[bool, str]:
        return self._running, f"serving {self.inference.model_name} v{self.inference.model_version}"

    # --- the loop --------------------------------------------------------------------------

    def _turn(self) -> None:
        self._last_turn = time.monotonic()
        # A newly announced model takes over between batches, never inside one.
        self._swap_model_if_announced()
        timeout = min(0.1, max(self.batcher.max_wait_s - self.batcher.waited_s(), 0.0))
        msgs = self.consumer.consume(self.settings.poll_max_records, timeout=timeout)
        self.publisher.poll()
        if msgs:
            self._ingest(msgs)
        if self.batcher.due():
            self._flush()

    def _ingest(self, msgs: list[Message]) -> None:
        started = time.perf_counter()
        # Step 1. decode; a record that cannot be used goes to the dead-letter topic.
        events = []
        for msg in msgs:
            if msg.error():
                self._on_consume_error(msg.error())
                continue
            self.pending_offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            try:
                events.append((to_user_event(self.codec.decode(msg.value() or b""), msg.key()), msg.partition()))
            except DecodeError as exc:
                self.publisher.dead_letter(msg, "decode", str(exc))
            except InvalidEvent as exc:
                self.publisher.dead_letter(msg, "invalid", str(exc))
        decoded = time.perf_counter()
        # Step 2. apply to the rolling state; the users that changed wait for the next flush.
        evicted_before = self.state.evicted_total
        self.batcher.add(self.state.apply(events))  # also when no user changed: offsets await a commit
        self.metrics.stage.labels("decode").observe(decoded - started)
        self.metrics.stage.labels("state").observe(time.perf_counter() - decoded)
        self.metrics.events.inc(len(events))
        self.metrics.users_in_state.set(len(self.state))
        self.metrics.users_evicted.inc(self.state.evicted_total - evicted_before)

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
            self.metrics.stage.labels("inference").observe(scored - started)
            self.metrics.stage.labels("publish").observe(time.perf_counter() - scored)
            self.metrics.batch_size.observe(len(user_ids))
        # Step 4. wait until the broker has acknowledged everything produced so far ...
        started = time.perf_counter()
        self.publisher.wait_delivered()
        # Step 5. ... and only then commit the offsets of the records behind it.
        self._commit()
        self.metrics.stage.labels("commit").observe(time.perf_counter() - started)

    def _commit(self) -> None:
        if not self.pending_offsets:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.pending_offsets.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            self.pending_offsets.clear()
        except KafkaException as exc:
            # The work is published; a lost commit only means replay (at-least-once). The
            # offsets stay pending and go with the next commit.
            log.warning("offset commit failed, will retry with the next flush: %s", exc)

    def _swap_model_if_announced(self) -> None:
        loaded = self.watcher.take()
        if loaded is None:
            return
        self.inference.swap(loaded)
        self.metrics.model_version.set(loaded.metadata.version)
        self.metrics.model_swaps.inc()
        log.info("now serving %s v%d", loaded.metadata.name, loaded.metadata.version)

    # --- rebalancing and errors ---------------------------------------------------------------

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions are leaving this worker: publish and commit their work while we still can."""
        if not self._broken:
            self._flush()
        self._forget(partitions)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions were taken without a chance to commit: their records will be replayed
        elsewhere, so their offsets are dropped; what is held is still published (duplicates
        are harmless: the newest recommendation per user wins)."""
        for tp in partitions:
            self.pending_offsets.pop((tp.topic, tp.partition), None)
        if not self._broken:
            self._flush()
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.pending_offsets.pop((tp.topic, tp.partition), None)
        dropped = self.state.forget_partitions({tp.partition for tp in partitions})
        self.metrics.users_in_state.set(len(self.state))
        log.info("partitions %s left this worker; dropped %d users", [tp.partition for tp in partitions], dropped)

    def _on_consume_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer: %s", error)
