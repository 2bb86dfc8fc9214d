import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from stream_worker.kafka.local import free_port
from stream_worker.metrics import TrainerMetrics, WorkerMetrics, serve

# topic/partition: consumer lag per partition (bounded by the topic); version/model_kind: build info;
# model_version/recommender: online hit-rate; error: produce errors by Kafka error name (a fixed set).
ALLOWED_LABELS = {
    "stage",
    "reason",
    "result",
    "le",
    "topic",
    "partition",
    "version",
    "model_kind",
    "model_version",
    "recommender",
    "error",
    "metric",
}
# prometheus_client's standard process_* and python_* collectors keep their conventional names.
STANDARD_PREFIXES = ("process_", "python_")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_follow_conventions_and_carry_no_high_cardinality_labels():
    worker, trainer = CollectorRegistry(), CollectorRegistry()
    WorkerMetrics(worker)
    TrainerMetrics(trainer)
    names = set()
    for family in [*worker.collect(), *trainer.collect()]:
        if family.name.startswith(STANDARD_PREFIXES):
            continue
        assert family.name.startswith("streamrec_")
        for sample in family.samples:
            names.add(sample.name)
            assert set(sample.labels) <= ALLOWED_LABELS, f"{sample.name} has labels {sample.labels}"
    for required in (
        "streamrec_event_to_recommendation_seconds_bucket",
        "streamrec_stage_duration_seconds_count",
        "streamrec_events_total",
        "streamrec_recommendations_total",
        "streamrec_dead_letters_total",
        "streamrec_users_in_state",
        "streamrec_model_version",
    ):
        assert required in names


@pytest.mark.parametrize("healthy", [True, False])
def test_the_http_endpoint_serves_metrics_and_probes(healthy):
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.events.inc(3)
    port = free_port()
    server = serve(registry, "127.0.0.1", port, healthy=lambda: (healthy, "detail"), ready=lambda: (False, "no"))
    try:
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "streamrec_events_total 3.0" in body
        assert get(f"http://127.0.0.1:{port}/healthz") == (200 if healthy else 503, "detail\n")
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 503
    finally:
        server.shutdown()
