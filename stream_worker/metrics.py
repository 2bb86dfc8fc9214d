"""Every Prometheus metric, declared once, and the small HTTP server that exposes them.

Names follow Prometheus conventions: `streamrec_` namespace, base units (`_seconds`),
`_total` for counters. Labels take a few fixed values, initialised up front; never a user
or item id. Each process builds its metrics on a registry it is given, so tests use a fresh
`CollectorRegistry()` and two workers in one test process do not collide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)

NAMESPACE = "streamrec"
STAGES = ("decode", "state", "batch_wait", "inference", "publish", "commit")
DEAD_LETTER_REASONS = ("decode", "invalid")
MODEL_UPDATE_REJECTIONS = (
    "decode",  # not a ModelUpdate
    "location",  # checkpoint outside the model directory, or an unsupported URI
    "file",  # a file is missing, not a regular file, or too large
    "metadata",  # metadata.json disagrees with the announcement
    "hash",  # weights do not match the announced SHA-256 (or none was announced)
    "version",  # not newer than the serving version (and no rollback), or an absurd jump
    "vocabulary",  # too few of the items seen in the stream are known to the model
    "timeout",  # verifying and loading took longer than model_load_timeout_s
    "load",  # the weights did not load into the model
)
# Event-to-recommendation latency spans milliseconds (live) to minutes (a backlog).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60, 300)
STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.event_to_recommendation = Histogram(
            "event_to_recommendation_seconds",
            "From a user's newest event (its event_time) to the broker acknowledging their recommendation",
            namespace=NAMESPACE,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage = Histogram(
            "stage_duration_seconds",
            "Time spent per loop stage: decode and state per polled chunk, batch_wait per user batch "
            "(first change to flush), inference/publish per batch of at most max_batch_size users, "
            "commit per flush",
            ["stage"],
            namespace=NAMESPACE,
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "batch_users",
            "Users scored together in one inference call",
            namespace=NAMESPACE,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.events = Counter("events_total", "User events applied to state", namespace=NAMESPACE, registry=registry)
        self.recommendations = Counter(
            "recommendations_total",
            "Recommendation records acknowledged by the broker",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.dead_letters = Counter(
            "dead_letters_total",
            "Records sent to the dead-letter topic, by reason",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.users_in_state = Gauge(
            "users_in_state", "Users whose rolling state is held in memory", namespace=NAMESPACE, registry=registry
        )
        self.users_evicted = Counter(
            "users_evicted_total",
            "Users dropped from state to stay within state_max_users",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.model_version = Gauge(
            "model_version", "Version of the checkpoint being served", namespace=NAMESPACE, registry=registry
        )
        self.model_swaps = Counter(
            "model_swaps_total", "Models swapped in while running", namespace=NAMESPACE, registry=registry
        )
        self.model_load_failures = Counter(
            "model_load_failures_total",
            "Announced checkpoints that could not be loaded (the current model stays)",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.produce_errors = Counter(
            "produce_errors_total",
            "Records the broker or the client refused (each is produced again after a back-off; "
            "offsets behind it wait), by topic and error name",
            ["topic", "error"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.dead_letters_truncated = Counter(
            "dead_letters_truncated_total",
            "Dead letters whose key or value was cut to fit the DLQ's size limit (size and SHA-256 in headers)",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.in_flight_records = Gauge(
            "in_flight_records",
            "Records produced and not yet acknowledged by the broker",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.kafka_reachable = Gauge(
            "kafka_reachable",
            "1 while the worker's last probe of the Kafka cluster answered, else 0",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.model_updates_rejected = Counter(
            "model_updates_rejected_total",
            "Model announcements refused, by reason (the current model keeps serving)",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.model_watcher_alive = Gauge(
            "model_watcher_alive",
            "1 while the model-updates watcher thread runs and has turned recently, else 0",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.items_in_state = Gauge(
            "items_in_state", "Distinct item ids held in the state's item table", namespace=NAMESPACE, registry=registry
        )
        self.items_dropped = Counter(
            "items_dropped_total",
            "Interactions kept without their item because the item table was full of referenced items",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.state_restore = Histogram(
            "state_restore_seconds",
            "Time to restore newly assigned partitions' users from the state topic",
            namespace=NAMESPACE,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self.state_restore_records = Counter(
            "state_restore_records_total",
            "State-topic records read while restoring",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.state_restored_users = Counter(
            "state_restored_users_total",
            "Users put back into state by restores",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.state_restoring = Gauge(
            "state_restoring", "1 while partitions are being restored, else 0", namespace=NAMESPACE, registry=registry
        )
        self.events_replayed = Counter(
            "events_replayed_total",
            "Replayed events skipped because the user's restored state already reflected them",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.users_forgotten = Counter(
            "users_forgotten_total",
            "Deletion requests (tombstones on the events topic) carried out",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.transactions_aborted = Counter(
            "transactions_aborted_total",
            "Exactly-once transactions aborted (the worker rewinds to the committed offsets and restores state)",
            namespace=NAMESPACE,
            registry=registry,
        )
        for stage in STAGES:
            self.stage.labels(stage)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for reason in MODEL_UPDATE_REJECTIONS:
            self.model_updates_rejected.labels(reason)

        # --- operations: the consumer's view of its group, the process, the build ---
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Messages between the group's committed offset and the end of each partition this worker is "
            "assigned (librdkafka statistics)",
            ["topic", "partition"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "assigned_partitions", "Partitions assigned to this worker", namespace=NAMESPACE, registry=registry
        )
        self.rebalances = Counter(
            "consumer_rebalances_total",
            "Consumer group rebalances this worker took part in",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.watcher_last_poll = Gauge(
            "model_watcher_last_poll_timestamp_seconds",
            "Unix time the model-updates watcher last finished a poll (it is alive while this advances)",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.build_info = build_info(registry)
        register_process_metrics(registry)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rounds = Counter(
            "trainer_rounds_total",
            "Training rounds, by result (published, skipped for too few events, failed)",
            ["result"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.round_duration = Histogram(
            "trainer_round_duration_seconds",
            "Read window + train + evaluate + save + announce",
            namespace=NAMESPACE,
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.events_in_window = Gauge(
            "trainer_window_events", "Events read in the last training window", namespace=NAMESPACE, registry=registry
        )
        self.model_version = Gauge(
            "trainer_model_version",
            "Version of the newest checkpoint published",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.last_success = Gauge(
            "trainer_last_success_timestamp_seconds",
            "Unix time of the last published checkpoint",
            namespace=NAMESPACE,
            registry=registry,
        )
        for result in ("skipped", "failed"):
            self.rounds.labels(result)
        # --- model lifecycle: every round ends promoted, rejected, skipped or failed ---
        self.candidate_quality = Gauge(
            "trainer_candidate_quality",
            "The last candidate's promotion metric (STREAMREC_PROMOTION_METRIC) on the freshest held-out events",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.serving_quality = Gauge(
            "trainer_serving_quality",
            "The serving model's promotion metric on the same held-out events as the last candidate",
            namespace=NAMESPACE,
            registry=registry,
        )
        for result in ("promoted", "rejected"):
            self.rounds.labels(result)
        # --- operations ---
        self.build_info = build_info(registry)
        register_process_metrics(registry)


# --- operations ---------------------------------------------------------------


def build_info(registry: CollectorRegistry) -> Info:
    """`streamrec_build_info{version, model_kind}`; the process sets it with `build_labels`."""
    return Info(
        "build",
        "streamrec version and the kind of model this process serves or trains",
        namespace=NAMESPACE,
        registry=registry,
    )


def build_labels(model_kind: str) -> dict[str, str]:
    try:
        version = package_version("streamrec")
    except PackageNotFoundError:  # running from a source tree that was never installed
        version = "unknown"
    return {"version": version, "model_kind": model_kind}


def register_process_metrics(registry: CollectorRegistry) -> None:
    """prometheus_client's `process_*` (RSS, CPU seconds, open files) and `python_info` on this
    registry: state is held in memory, so a worker's RSS is the figure to watch."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


Probe = Callable[[], tuple[bool, str]]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: no access log
        pass


def serve(registry: CollectorRegistry, host: str, port: int, *, healthy: Probe, ready: Probe) -> _ThreadingWSGIServer:
    """Serve /metrics, /healthz and /readyz on a daemon thread; returns the server (`.shutdown()`).

    prometheus_client's own server answers /metrics only; Kubernetes probes need the other two.
    """
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok, detail = (healthy if path == "/healthz" else ready)()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [detail.encode() + b"\n"]
        return metrics_app(environ, start_response)

    server = make_server(host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


# --- online (prequential) evaluation, in the worker ----------------------------------------------

ONLINE_RECOMMENDERS = ("model", "popularity")


class OnlineMetrics:
    """Hit-rate@K of the lists sent, by the model version that made them; labels never hold ids."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "online_events_total",
            "Events of users who had been sent a list, by the version of the model that made that list",
            ["model_version"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.hits = Counter(
            "online_hits_total",
            "Of those events, the ones whose item was in the last list sent (recommender=model) or in the "
            "popularity list of the same moment (recommender=popularity); hit-rate = hits / events",
            ["model_version", "recommender"],
            namespace=NAMESPACE,
            registry=registry,
        )
