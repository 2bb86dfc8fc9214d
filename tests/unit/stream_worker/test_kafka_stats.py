"""Consumer metrics from a real librdkafka statistics document.

`data/librdkafka_consumer_stats.json` was captured from the local broker: a consumer of group
`streamrec-worker` assigned all three partitions of `user-events` (300 records), after reading
some and committing: partition 0 had no commit yet (lag unknown, -1), partition 1 was 108
behind, partition 2 caught up; plus librdkafka's internal partition -1.
"""

import copy
import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from stream_worker.kafka.stats import ConsumerStats, partition_lags
from stream_worker.metrics import WorkerMetrics

STATS = json.loads((Path(__file__).parent / "data" / "librdkafka_consumer_stats.json").read_text())


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_lag_is_read_for_assigned_partitions_with_a_known_lag():
    assert partition_lags(STATS) == {("user-events", 1): 108, ("user-events", 2): 0}


def test_stats_become_lag_assignment_and_rebalance_metrics():
    registry = CollectorRegistry()
    stats = ConsumerStats(WorkerMetrics(registry), interval_ms=1000)
    stats.on_stats(json.dumps(STATS))
    lag = "streamrec_consumer_lag_messages"
    assert _sample(registry, lag, topic="user-events", partition="1") == 108
    assert _sample(registry, lag, topic="user-events", partition="2") == 0
    assert _sample(registry, lag, topic="user-events", partition="0") is None
    assert _sample(registry, "streamrec_assigned_partitions") == 3
    assert _sample(registry, "streamrec_consumer_rebalances_total") == 1

    # A later document: partition 1 moved to another worker, a second rebalance happened.
    later = copy.deepcopy(STATS)
    later["topics"]["user-events"]["partitions"]["1"]["desired"] = False
    later["cgrp"].update(rebalance_cnt=2, assignment_size=2)
    stats.on_stats(json.dumps(later))
    assert _sample(registry, lag, topic="user-events", partition="1") is None
    assert _sample(registry, "streamrec_assigned_partitions") == 2
    assert _sample(registry, "streamrec_consumer_rebalances_total") == 2


def test_a_broken_document_is_logged_not_raised():
    registry = CollectorRegistry()
    ConsumerStats(WorkerMetrics(registry), interval_ms=1000).on_stats("{not json")
    assert _sample(registry, "streamrec_assigned_partitions") == 0


def test_statistics_are_off_with_a_zero_interval():
    stats = ConsumerStats(WorkerMetrics(CollectorRegistry()), interval_ms=0)
    assert stats.consumer_options() == {}
    assert set(ConsumerStats(stats.metrics, 5000).consumer_options()) == {"statistics.interval.ms", "stats_cb"}


def test_process_and_build_metrics_are_on_the_workers_registry():
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.build_info.info({"version": "0.1.0", "model_kind": "multvae"})
    assert _sample(registry, "process_resident_memory_bytes") > 0
    assert _sample(registry, "streamrec_build_info", version="0.1.0", model_kind="multvae") == 1
