"""`streamrec bench`, the worker from outside: its own process draining a backlog, and latency at fixed rates
(a producer process stamps events as it sends them, a reader process times the lists that reflect them)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import TopicPartition

from stream_worker.codec import RECOMMENDATION, USER_EVENT, SingleObjectCodec, from_user_event
from stream_worker.config import Settings
from stream_worker.devtools.bench_setup import BenchConfig, make_events
from stream_worker.kafka.clients import new_consumer, new_producer, new_reader


class WorkerProcess:
    """`streamrec worker` as a child process, with its settings in the environment."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update(settings.to_env())  # every setting, the run's own topics included
        env["STREAMREC_METRICS_HOST"] = "127.0.0.1"
        self.port = settings.metrics_port
        self._log = log_path.open("wb")
        command = [sys.executable, "-m", "stream_worker", "worker", "--model", str(settings.model_dir)]
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def metrics(self) -> dict[str, float]:
        """The worker's /metrics as {name{labels}: value} (samples of every family)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
                if "le" not in s.labels:
                    samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


def stage_breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean seconds per observation of each worker stage, mean users per batch, flushes, between two scrapes."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    out: dict[str, float] = {}
    for stage in ("decode", "state", "batch_wait", "inference", "publish", "commit"):
        n = delta(f"streamrec_stage_duration_seconds_count{{stage={stage}}}")
        total = delta(f"streamrec_stage_duration_seconds_sum{{stage={stage}}}")
        out[f"{stage} ms"] = 1000 * total / n if n else 0.0
        out[f"{stage} s total"] = total
    batches = delta("streamrec_batch_users_count")
    out["users per batch"] = delta("streamrec_batch_users_sum") / batches if batches else 0.0
    out["batches"] = batches
    out["flushes"] = delta("streamrec_stage_duration_seconds_count{stage=commit}")
    return out


def drain(settings: Settings, worker: WorkerProcess, n_events: int) -> dict[str, Any]:
    """The worker (just started) drains the backlog: events/s while it went from 10% to 90% of
    the events (its /metrics scraped every 50 ms, crossing times interpolated), and the wall
    time from its first applied event until its committed offsets reach the end."""
    topic = settings.events_topic
    watcher = new_consumer(settings, settings.group_id)
    try:
        partitions = [TopicPartition(topic, p) for p in watcher.list_topics(topic, timeout=10).topics[topic].partitions]
        ends = {tp.partition: watcher.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        assert sum(ends.values()) == n_events, f"the events topic holds {sum(ends.values())} events, not {n_events}"
        trace: list[tuple[float, float]] = []  # (seconds, events applied)
        before: dict[str, float] = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.process.returncode} while draining")
            try:
                scrape = worker.metrics()
            except OSError:  # its HTTP endpoint is not up yet
                time.sleep(0.02)
                continue
            before = before or scrape
            trace.append((time.perf_counter(), scrape.get("streamrec_events_total", 0.0)))
            if trace[-1][1] >= n_events:
                committed = {tp.partition: tp.offset for tp in watcher.committed(partitions, timeout=10)}
                if committed == ends:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("the worker did not drain the backlog within 600 s")
        t, applied = np.array(trace).T
        first = t[np.argmax(applied > 0)]
        t10, t90 = np.interp([0.1 * n_events, 0.9 * n_events], applied, t)  # applied only grows
        return {
            "events": n_events,
            "events/s": 0.8 * n_events / (t90 - t10),
            "seconds first event to all committed": float(t[-1] - first),
        } | stage_breakdown(before, worker.metrics())
    finally:
        watcher.close()


def _producer_process(common: dict, topic: str, config: BenchConfig, rate: float, seed: int, out: str) -> None:
    """Child process: events at `rate`/s for seconds_per_rate, each stamped with the time it is sent."""
    events = make_events(config, int(rate * config.seconds_per_rate), seed, 0)
    codec = SingleObjectCodec(USER_EVENT)
    # linger 1 ms: the producer's own batching delay is part of what the reader measures.
    producer = new_producer(common, **{"message.timeout.ms": 60_000})
    started = time.perf_counter()
    for n, event in enumerate(events):
        # poll() returns early when it serves a delivery report, so wait until the time has come.
        # It counts whole milliseconds: for less it returns at once, and the loop would spin.
        while (ahead := started + n / rate - time.perf_counter()) > 0:
            if ahead >= 0.001:
                producer.poll(ahead)
            else:
                time.sleep(ahead)  # pacing the load, not waiting for an event
        record = from_user_event(event) | {"event_time": int(time.time() * 1000)}
        producer.produce(topic, codec.encode(record), event.user_id.encode())
        producer.poll(0)
    sent_s = time.perf_counter() - started
    assert producer.flush(60) == 0, "rate producer: records unacknowledged"
    Path(out).write_text(json.dumps({"sent": len(events), "seconds": sent_s, "cpu s": _cpu_s(os.getpid())}))


def _reader_process(common: dict, topic: str, ready: Any, stop: Any, out: str) -> None:
    """Child process: receive recommendations from the current end; save (received, last_event_time, generated_at)."""
    codec = SingleObjectCodec(RECOMMENDATION)
    consumer = new_reader(common, f"bench-reader-{uuid.uuid4().hex[:8]}", **{"fetch.wait.max.ms": 10})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, end) for p, end in ends.items()])
    consumer.consume(1, timeout=0.5)  # connected and fetching before the producer starts
    ready.set()
    rows = []
    while not stop.is_set():
        # Block for the first list only, then take what has already arrived: consume(1000, 0.05)
        # would hold every list until 1,000 came or 50 ms passed, and the reader's wait would count.
        msgs = consumer.consume(1, timeout=0.05)
        msgs += consumer.consume(999, timeout=0) if msgs else []
        received = time.time() * 1000  # before decoding: decoding is the reader's cost, not the worker's
        for msg in msgs:
            if msg.error() or msg.value() is None:
                continue
            r = codec.decode(msg.value() or b"")
            rows.append((received, r["last_event_time"], r["generated_at"]))
    consumer.close()
    np.save(out, np.array(rows, dtype=np.float64).reshape(-1, 3))


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) process `pid` has used so far, from /proc; 0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0.0


def _machine_busy_s() -> float:
    """Core-seconds the whole machine has been busy (not idle or waiting for I/O), from /proc/stat."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _hog_process(stop: Any) -> None:
    """Child process: one core busy until `stop` is set (the load of a noisy neighbour)."""
    n = 0
    while not stop.is_set():
        for _ in range(100_000):
            n += 1


def at_rate(
    settings: Settings,
    worker: WorkerProcess,
    config: BenchConfig,
    rate: float,
    tmp: Path,
    broker_pid: int | None = None,
    *,
    hog: bool = False,
) -> dict[str, Any]:
    """Latency at `rate` events/s; with `hog`, while a process keeps one core busy beside the worker."""
    ctx = mp.get_context("spawn")
    if hog:
        hog_stop = ctx.Event()
        hogger = ctx.Process(target=_hog_process, args=(hog_stop,), daemon=True)
        hogger.start()
        try:
            return at_rate(settings, worker, config, rate, tmp, broker_pid) | {"loaded": True}
        finally:
            hog_stop.set()
            hogger.join(10)
    ready, stop = ctx.Event(), ctx.Event()
    reader_out, producer_out = tmp / f"reader-{rate:g}.npy", tmp / f"producer-{rate:g}.json"
    common = settings.kafka_common()
    reader = ctx.Process(
        target=_reader_process, args=(common, settings.recommendations_topic, ready, stop, str(reader_out))
    )
    reader.start()
    try:
        assert ready.wait(60), "the latency reader did not start within 60 s"
        before = worker.metrics()
        cpu_before = [_cpu_s(pid) for pid in (worker.process.pid, broker_pid, reader.pid)] + [_machine_busy_s()]
        wall_before = time.perf_counter()
        started_ms = time.time() * 1000
        producer = ctx.Process(
            target=_producer_process,
            args=(common, settings.events_topic, config, rate, config.seed + int(rate), str(producer_out)),
        )
        producer.start()
        producer.join(config.seconds_per_rate + 120)
        assert producer.exitcode == 0, f"the rate producer failed (exit code {producer.exitcode})"
        _wait_drained(settings, 60)
        time.sleep(0.5)  # the reader's last fetch
        after = worker.metrics()
        cpu_after = [_cpu_s(pid) for pid in (worker.process.pid, broker_pid, reader.pid)] + [_machine_busy_s()]
        wall = time.perf_counter() - wall_before
    finally:
        stop.set()
        reader.join(30)
    rows = np.load(reader_out)
    sent = json.loads(producer_out.read_text())
    counted = rows[rows[:, 1] >= started_ms + config.warmup_s * 1000]
    latency = counted[:, 0] - counted[:, 1]  # ms: the reader has the list - newest event it reflects
    generated = counted[:, 2] - counted[:, 1]  # ms: the worker scored it - newest event
    pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
    return {
        "rate": rate,
        "loaded": False,
        "achieved events/s": sent["sent"] / sent["seconds"],
        "lists": len(counted),
        "latency p50 ms": pct(latency, 50),
        "latency p90 ms": pct(latency, 90),
        "latency p99 ms": pct(latency, 99),
        "latency max ms": float(latency.max()) if len(latency) else float("nan"),
        "event to generated_at p50 ms": pct(generated, 50),
        "event to generated_at p99 ms": pct(generated, 99),
        "latencies ms": latency.round(2).tolist(),
        # Where the CPU went while at this rate, in % of one core (the machine: of all its cores).
        "cpu % worker": 100 * (cpu_after[0] - cpu_before[0]) / wall,
        "cpu % broker": 100 * (cpu_after[1] - cpu_before[1]) / wall,
        "cpu % reader": 100 * (cpu_after[2] - cpu_before[2]) / wall,
        "cpu % producer": 100 * sent.get("cpu s", 0.0) / wall,
        "cpu % machine": 100 * (cpu_after[3] - cpu_before[3]) / wall / (os.cpu_count() or 1),
    } | stage_breakdown(before, after)


def _wait_drained(settings: Settings, timeout_s: float) -> None:
    from stream_worker.kafka.topics import committed_and_end_offsets

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        committed, ends = committed_and_end_offsets(settings)
        if committed == ends:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the worker did not catch up within {timeout_s:.0f}s of the producer finishing")
