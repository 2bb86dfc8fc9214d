"""The consumer's own view of its group: lag per partition, assignment, rebalances.

librdkafka computes these itself and hands them over as a JSON document every
`statistics.interval.ms` through `stats_cb` (called from `poll`/`consume` on the loop's
thread). Reading that document is the robust way to get lag from the worker: no extra
admin client, no extra broker round trips, and the numbers are the consumer's own
(`consumer_lag` = high watermark - committed offset, the same figure KEDA scales on).
confluent-kafka passes the JSON through undecoded, so the few fields we need are picked
here (the format is documented in librdkafka's STATISTICS.md).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from stream_worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# librdkafka's internal "unassigned" partition: messages not yet routed; never a real partition.
UNASSIGNED_PARTITION = "-1"


def partition_lags(stats: dict[str, Any]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> messages behind the committed offset, for the partitions this
    consumer is assigned and whose lag is known (librdkafka reports -1 before a first commit)."""
    lags: dict[tuple[str, int], int] = {}
    for topic, topic_stats in stats.get("topics", {}).items():
        for partition, p in topic_stats.get("partitions", {}).items():
            if partition == UNASSIGNED_PARTITION or not p.get("desired", False):
                continue
            lag = p.get("consumer_lag", -1)
            if lag >= 0:
                lags[(topic, int(partition))] = lag
    return lags


class ConsumerStats:
    """Turns each statistics document into the worker's consumer metrics.

    Lag gauges exist only for partitions currently reported with a known lag, so a partition
    that moved to another worker stops being reported here (the other worker reports it).
    """

    def __init__(self, metrics: WorkerMetrics, interval_ms: int) -> None:
        self.metrics = metrics
        self.interval_ms = interval_ms
        self._reported: set[tuple[str, int]] = set()
        self._rebalances_seen = 0

    def consumer_options(self) -> dict[str, Any]:
        """librdkafka settings that make the consumer call `on_stats` (none when turned off)."""
        if self.interval_ms <= 0:
            return {}
        return {"statistics.interval.ms": self.interval_ms, "stats_cb": self.on_stats}

    def on_stats(self, raw: str) -> None:
        try:
            self.update(json.loads(raw))
        except (ValueError, TypeError, AttributeError) as exc:  # never let a stats hiccup stop the loop
            log.warning("could not read librdkafka statistics: %s", exc)

    def update(self, stats: dict[str, Any]) -> None:
        lags = partition_lags(stats)
        for topic, partition in self._reported - lags.keys():
            self.metrics.consumer_lag.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)
        self._reported = set(lags)

        group = stats.get("cgrp") or {}
        self.metrics.assigned_partitions.set(group.get("assignment_size", 0))
        # rebalance_cnt counts this consumer's rebalances since it was created.
        rebalances = group.get("rebalance_cnt", 0)
        if rebalances > self._rebalances_seen:
            self.metrics.rebalances.inc(rebalances - self._rebalances_seen)
            self._rebalances_seen = rebalances
