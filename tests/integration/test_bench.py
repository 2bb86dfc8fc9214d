"""`streamrec bench --quick` against the test broker: every phase runs and every figure is in the JSON."""

import json
import math

import pytest

from stream_worker.devtools.bench import run_bench
from stream_worker.devtools.bench_setup import BenchConfig

pytestmark = pytest.mark.integration


def test_quick_bench_measures_every_figure(kafka_bootstrap, tmp_path):
    results = run_bench(BenchConfig.quick(), tmp_path, bootstrap_servers=kafka_bootstrap, say=lambda _: None)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    stages = {
        "produce events/s", "consume events/s", "decode events/s", "state events/s",
        "model b1 dense users/s", "model b256 dense users/s", "model b1 sparse users/s", "model b256 sparse users/s",
        "encode (codec) lists/s", "encode (batch encoder) lists/s", "encode+produce lists/s",
    }  # fmt: skip
    assert set(saved["stages"]) == stages
    assert all(value > 0 and math.isfinite(value) for value in saved["stages"].values())
    assert saved["naive_events_per_s"] > 0
    state = saved["state_bytes"]  # the quick config keeps 100 recent items per user too
    assert state["interactions bytes"] == 1000 and state["arrays bytes"] == 1028
    assert 1028 < state["allocated bytes"] < 4000  # + user id, last event id, the dict entry
    drain = saved["drain"]
    assert drain["events"] == 3000 and drain["events/s"] > 0 and drain["users per batch"] >= 1
    rate, loaded = saved["rates"]  # the rate, then the same rate with a CPU hog beside the worker
    assert not rate["loaded"] and loaded["loaded"] and loaded["rate"] == 200 and loaded["lists"] > 100
    assert rate["rate"] == 200 and 150 < rate["achieved events/s"] < 250
    # Every list counted reflects an event of this run, so latencies are positive and bounded.
    assert rate["lists"] > 100 and len(rate["latencies ms"]) == rate["lists"]
    assert 0 < rate["latency p50 ms"] <= rate["latency p99 ms"] <= rate["latency max ms"] < 30_000
    assert rate["event to generated_at p50 ms"] <= rate["latency p50 ms"]
    # Where the CPU went while at the rate (the broker's is known only for the bench's own broker).
    assert rate["cpu % worker"] > 0 and rate["cpu % producer"] > 0 and rate["cpu % broker"] == 0
    assert 0 < rate["cpu % machine"] <= 100
    assert set(saved["ratios"]) >= {"drain / naive", "model b256 sparse / dense", "batch encoder / codec"}
    assert results.ratios["drain / naive"] == saved["ratios"]["drain / naive"]


def test_quick_bench_serves_a_sequence_model(kafka_bootstrap, tmp_path):
    results = run_bench(
        BenchConfig.quick(kind="sasrec"), tmp_path, bootstrap_servers=kafka_bootstrap, say=lambda _: None
    )
    s = results.stages
    assert s["model b1 sequence users/s"] > 0 and s["model b256 sequence users/s"] > 0
    assert not any("dense" in name or "sparse" in name for name in s), "a sequence model has one scoring path"
    assert results.drain["events"] == 3000 and all(r["lists"] > 100 for r in results.rates)
    assert results.ratios["model b256 / b1 (sequence)"] > 0 and results.ratios["drain / naive"] > 0
    assert "sasrec" in (tmp_path / "bench.md").read_text()
