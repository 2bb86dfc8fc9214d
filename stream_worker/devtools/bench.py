"""`streamrec bench`: the end-to-end benchmark on a Kafka broker, in one command and one run.

    1. stage limits, each stage alone in this process on the same events: consume, decode,
       state, model (batch 1 and 256, dense input and sparse bags), encode (+ produce);
    2. a naive per-event consumer on the same records: poll 1, decode, batch-1 forward, produce;
    3. the real worker (`streamrec worker`, its own process) draining the backlog;
    4. latency at fixed rates: a producer process sends events at R/s stamped with the time
       they are sent, a reader process receives the recommendations, and latency = time the
       reader has a list - `event_time` of the newest event it reflects. The worker's own
       stage times over each run come from its /metrics.

The model is a random-initialised Mult-VAE (600-200; speed does not depend on the weights) of
`n_items` items; events pick users uniformly and items from a Zipf law. Figures go to a
table on stdout, `bench.json` and `bench.png` in the output folder. Nothing here is faked:
every figure is measured in the same run, on whatever else the machine is doing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Producer, TopicPartition

from stream_worker.codec import RECOMMENDATION, USER_EVENT, SingleObjectCodec, UserEvent, from_user_event
from stream_worker.config import Settings, topics_under
from stream_worker.kafka.clients import new_admin, new_consumer, new_producer, new_reader

EVENT_TYPES = ("VIEW", "CLICK", "ADD_TO_CART", "PURCHASE")


@dataclass(frozen=True)
class BenchConfig:
    n_items: int = 3706  # MovieLens-1M's catalog
    n_users: int = 6040  # and its users
    recent_items: int = 100
    top_k: int = 20
    backlog_events: int = 150_000  # drained by the worker (several flushes); the stage limits use the same events
    naive_events: int = 6_000  # the naive consumer is slow: it takes the first ones only
    model_batch1_users: int = 1_000
    rates: tuple[float, ...] = (250.0, 500.0, 1000.0)
    seconds_per_rate: float = 20.0
    warmup_s: float = 3.0  # lists for events of the first seconds of each rate are not counted
    device: str = "cpu"
    partitions: int = 3
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A smoke test of every phase in well under a minute (figures are not meaningful)."""
        small = dict(
            n_items=500, n_users=300, backlog_events=3_000, naive_events=200, model_batch1_users=100,
            rates=(200.0,), seconds_per_rate=3.0, warmup_s=0.5,
        )  # fmt: skip
        return cls(**{**small, **overrides})


@dataclass
class Results:
    config: dict[str, Any]
    environment: dict[str, Any]
    stages: dict[str, float] = field(default_factory=dict)  # name -> per second
    naive_events_per_s: float = 0.0
    drain: dict[str, Any] = field(default_factory=dict)
    rates: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    state_bytes: dict[str, float] = field(default_factory=dict)  # per user held


# --- events --------------------------------------------------------------------------------


def make_events(config: BenchConfig, n: int, seed: int, start_ms: int) -> list[UserEvent]:
    """n events: every user at least once (while n allows), then users uniform, items Zipf."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, config.n_users, n)
    users[: min(n, config.n_users)] = rng.permutation(config.n_users)[:n]
    items = (rng.zipf(1.3, n) - 1) % config.n_items
    kinds = rng.integers(0, len(EVENT_TYPES), n)
    return [
        UserEvent(f"b{seed}-{k}", f"u{users[k]:05d}", f"i{items[k]:05d}", EVENT_TYPES[kinds[k]], None, start_ms + k)
        for k in range(n)
    ]


def item_ids(config: BenchConfig) -> list[str]:
    return [f"i{i:05d}" for i in range(config.n_items)]


def create_topics(settings: Settings, names: list[str], partitions: int) -> None:
    from confluent_kafka.admin import NewTopic

    admin = new_admin(settings)  # held until the futures resolve
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions) for n in names])
    for future in futures.values():
        future.result(timeout=30)


def warm_producer(settings: Settings, topic: str) -> Producer:
    """An idempotent producer that already has its producer id and the topic's metadata."""
    producer = new_producer(settings)
    producer.produce(topic, b"warm-up", b"warm-up")
    assert producer.flush(60) == 0, f"could not produce to {topic} within 60 s"
    return producer


def produce_all(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> float:
    """Produce (key, value) pairs as fast as possible; returns records/s including the final flush."""
    producer = warm_producer(settings, f"{settings.recommendations_topic}.stage")
    started = time.perf_counter()
    for key, value in values:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0, "the broker did not acknowledge every record within 60 s"
    return len(values) / (time.perf_counter() - started)


# --- 1. stage limits -----------------------------------------------------------------------


def consume_all(settings: Settings, topic: str, n: int, max_records: int = 1000) -> tuple[float, list[Any]]:
    """Read n records from the beginning of `topic` with consume(max_records): (records/s, messages)."""
    consumer = new_reader(settings, f"bench-consume-{uuid.uuid4().hex[:8]}")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        msgs: list[Any] = []
        deadline = time.monotonic() + 120
        first = consumer.consume(1, timeout=30)  # connection and first fetch are not the stage's cost
        msgs.extend(m for m in first if not m.error())
        started = time.perf_counter()
        while len(msgs) < n and time.monotonic() < deadline:
            # Never ask for more than are left: consume() waits for all it asks for, or the timeout.
            wanted = min(max_records, n - len(msgs))
            msgs.extend(m for m in consumer.consume(wanted, timeout=0.5) if not m.error())
        elapsed = time.perf_counter() - started
        assert len(msgs) >= n, f"read {len(msgs)} of {n} records from {topic}"
        return (len(msgs) - len(first)) / elapsed, msgs
    finally:
        consumer.close()


def stage_limits(config: BenchConfig, settings: Settings, model_dir: Path, results: Results) -> None:
    import torch

    from models import checkpoint
    from stream_worker.codec import to_user_event
    from stream_worker.config import DEFAULT_EVENT_WEIGHTS
    from stream_worker.worker.encoders import RecommendationEncoder, record
    from stream_worker.worker.inference import Inference
    from stream_worker.worker.state import UserState

    stages = results.stages
    rate, msgs = consume_all(settings, settings.events_topic, config.backlog_events)
    stages["consume events/s"] = rate

    codec = SingleObjectCodec(USER_EVENT)
    started = time.perf_counter()
    events = [(to_user_event(codec.decode(m.value()), m.key()), m.partition(), m.offset()) for m in msgs]
    stages["decode events/s"] = len(events) / (time.perf_counter() - started)

    state = UserState(
        max_users=config.n_users * 2,
        recent_items=config.recent_items,
        event_weights=DEFAULT_EVENT_WEIGHTS,
        decay_half_life_s=Settings.model_fields["decay_half_life_s"].default,
    )
    started = time.perf_counter()
    state.apply(events)
    stages["state events/s"] = len(events) / (time.perf_counter() - started)
    results.state_bytes = state_bytes_per_user(config, msgs)

    device = torch.device(config.device)
    loaded = checkpoint.load(model_dir, device)
    users = sorted({e.user_id for e, *_ in events})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for sparse in (False, True):
        inference = Inference(loaded, state.items, device, config.top_k, sparse=sparse)
        for batch_size in (1, 256):
            ids = users[: config.model_batch1_users] if batch_size == 1 else users
            inference.recommend(state.batch(ids[:batch_size]))  # warm-up
            sync()
            started = time.perf_counter()
            for lo in range(0, len(ids), batch_size):
                inference.recommend(state.batch(ids[lo : lo + batch_size]))
            sync()
            name = f"model b{batch_size} {'sparse' if sparse else 'dense'} users/s"
            stages[name] = len(ids) / (time.perf_counter() - started)

    # Encoding: the per-record codec (fastavro) against the batch encoder, on 256-user batches.
    batches = [(b := state.batch(users[lo : lo + 256]), inference.recommend(b)) for lo in range(0, len(users), 256)]
    out_codec = SingleObjectCodec(RECOMMENDATION)
    started = time.perf_counter()
    for batch, ranked in batches:
        [out_codec.encode(record(batch, ranked, b, "multvae", 1, 0)) for b in range(len(batch.user_ids))]
    stages["encode (codec) lists/s"] = len(users) / (time.perf_counter() - started)
    encoder = RecommendationEncoder(out_codec)
    started = time.perf_counter()
    for batch, ranked in batches:
        encoder.encode(batch, ranked, model_name="multvae", model_version=1, generated_at=0)
    stages["encode (batch encoder) lists/s"] = len(users) / (time.perf_counter() - started)
    topic = f"{settings.recommendations_topic}.stage"
    producer = warm_producer(settings, topic)
    started = time.perf_counter()
    for batch, ranked in batches:
        values = encoder.encode(batch, ranked, model_name="multvae", model_version=1, generated_at=0)
        for user_id, value in zip(batch.user_ids, values, strict=True):
            producer.produce(topic, value, user_id.encode())
        producer.poll(0)
    assert producer.flush(60) == 0, "stage encode+produce: records unacknowledged"
    stages["encode+produce lists/s"] = len(users) / (time.perf_counter() - started)


def state_bytes_per_user(config: BenchConfig, msgs: list[Any]) -> dict[str, float]:
    """What a user costs in the state: its arrays per user (interactions, and with the per-user
    counters), and every byte Python allocated for the state while decoding into it (ids and
    the dict included; tracemalloc, so strings the state keeps are counted once)."""
    import tracemalloc

    from stream_worker.codec import to_user_event
    from stream_worker.config import DEFAULT_EVENT_WEIGHTS
    from stream_worker.worker.state import UserState

    codec = SingleObjectCodec(USER_EVENT)
    tracemalloc.start()
    try:
        state = UserState(
            max_users=config.n_users,  # arrays sized to the users exactly: no spare rows counted
            recent_items=config.recent_items,
            event_weights=DEFAULT_EVENT_WEIGHTS,
            decay_half_life_s=Settings.model_fields["decay_half_life_s"].default,
        )
        for lo in range(0, len(msgs), 1000):
            chunk = msgs[lo : lo + 1000]
            state.apply([(to_user_event(codec.decode(m.value()), m.key()), m.partition(), m.offset()) for m in chunk])
        allocated = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    arrays = state.bytes_per_user()
    return {
        "interactions bytes": arrays["interactions"],
        "arrays bytes": arrays["all"],
        "allocated bytes": allocated / len(state),
    }


# --- 2. the naive consumer -----------------------------------------------------------------


def naive_consumer(config: BenchConfig, settings: Settings, model_dir: Path) -> float:
    """Per event: poll 1, decode, apply, score that one user, encode, produce. Returns events/s."""
    import torch

    from models import checkpoint
    from stream_worker.codec import to_user_event
    from stream_worker.config import DEFAULT_EVENT_WEIGHTS
    from stream_worker.worker.encoders import record
    from stream_worker.worker.inference import Inference
    from stream_worker.worker.state import UserState

    state = UserState(
        max_users=config.n_users * 2,
        recent_items=config.recent_items,
        event_weights=DEFAULT_EVENT_WEIGHTS,
        decay_half_life_s=Settings.model_fields["decay_half_life_s"].default,
    )
    inference = Inference(checkpoint.load(model_dir, config.device), state.items, torch.device(config.device), 20)
    in_codec, out_codec = SingleObjectCodec(USER_EVENT), SingleObjectCodec(RECOMMENDATION)
    consumer = new_consumer(
        settings, f"{settings.group_id}.naive", **{"enable.auto.commit": True, "auto.offset.reset": "earliest"}
    )
    topic = f"{settings.recommendations_topic}.naive"
    producer = warm_producer(settings, topic)
    consumer.subscribe([settings.events_topic])
    try:
        done, started = 0, None
        deadline = time.monotonic() + 300
        while done < config.naive_events and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            started = started or time.perf_counter()  # from the first record: joining the group is not counted
            event = to_user_event(in_codec.decode(msg.value()), msg.key())
            state.apply([(event, msg.partition(), msg.offset())])
            batch = state.batch([event.user_id])
            ranked = inference.recommend(batch)
            value = out_codec.encode(record(batch, ranked, 0, "multvae", 1, int(time.time() * 1000)))
            producer.produce(topic, value, msg.key())
            producer.poll(0)
            done += 1
        assert producer.flush(60) == 0, "naive consumer: records unacknowledged"
        assert started is not None and done == config.naive_events, f"naive consumer read {done} records"
        return done / (time.perf_counter() - started)
    finally:
        consumer.close()


# --- 3 and 4. the worker, from outside ------------------------------------------------------


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
            r = codec.decode(msg.value())
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


def at_rate(
    settings: Settings,
    worker: WorkerProcess,
    config: BenchConfig,
    rate: float,
    tmp: Path,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
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


# --- the run -------------------------------------------------------------------------------


def run_bench(
    config: BenchConfig,
    out_dir: Path,
    *,
    bootstrap_servers: str | None = None,
    say: Callable[[str], None] = print,
) -> Results:
    """The whole benchmark; starts (and stops) its own local broker unless `bootstrap_servers` names one."""
    import torch

    from models import checkpoint
    from models.multvae import MultVAE
    from stream_worker.config import load_settings
    from stream_worker.kafka.local import DEFAULT_HOME, LocalKafka, free_port
    from stream_worker.kafka.topics import ensure_topics

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # as the worker (STREAMREC_TORCH_THREADS=1): stage limits on the same footing
    results = Results(
        config=asdict(config),
        environment={
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if config.device == "cuda" else "cpu",
            "load average at start": os.getloadavg()[0],
            "model": "Mult-VAE 600-200, random initial weights (speed does not depend on them)",
        },
    )
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp_name:
        tmp = Path(tmp_name)
        broker = None
        if bootstrap_servers is None:
            say("starting a local Kafka broker for the benchmark ...")
            broker = LocalKafka(port=free_port(), home=tmp / "kafka", jars=DEFAULT_HOME / "jars")
            broker.start()
            bootstrap_servers = broker.bootstrap
        worker = None
        try:
            run = uuid.uuid4().hex[:8]
            settings = load_settings(
                bootstrap_servers=bootstrap_servers,
                **topics_under(f"bench{run}"),
                group_id=f"bench{run}.worker",
                model_dir=tmp / "model",
                device=config.device,
                torch_threads=1,
                top_k=config.top_k,
                state_recent_items=config.recent_items,
                metrics_port=free_port(),
            )
            ensure_topics(settings, partitions=config.partitions)
            extra = [f"{settings.recommendations_topic}.{name}" for name in ("stage", "naive")]
            create_topics(settings, extra, config.partitions)
            torch.manual_seed(config.seed)
            checkpoint.save(MultVAE(config.n_items), tmp / "model", item_ids=item_ids(config), name="multvae")

            say(f"producing a backlog of {config.backlog_events:,} events ({config.n_users:,} users, "
                f"{config.n_items:,} items) ...")  # fmt: skip
            codec = SingleObjectCodec(USER_EVENT)
            newest_is_now = int(time.time() * 1000) - config.backlog_events  # no event_time in the future
            events = make_events(config, config.backlog_events, config.seed, newest_is_now)
            values = [(e.user_id.encode(), codec.encode(from_user_event(e))) for e in events]
            results.stages["produce events/s"] = produce_all(settings, settings.events_topic, values)

            say("1/4 stage limits, each stage alone ...")
            stage_limits(config, settings, tmp / "model", results)
            say("2/4 the naive per-event consumer ...")
            results.naive_events_per_s = naive_consumer(config, settings, tmp / "model")
            say("3/4 the worker draining the backlog ...")
            worker = WorkerProcess(settings, out_dir / "worker.log")
            results.drain = drain(settings, worker, config.backlog_events)
            for rate in config.rates:
                say(f"4/4 latency at {rate:g} events/s for {config.seconds_per_rate:g} s ...")
                results.rates.append(at_rate(settings, worker, config, rate, tmp, broker and broker.pid()))
            code = worker.stop()
            worker = None
            assert code == 0, f"the worker exited with code {code}; see {out_dir / 'worker.log'}"
        finally:
            if worker is not None:
                worker.stop()
            if broker is not None:
                broker.destroy()

    s = results.stages
    results.ratios = {
        "drain / naive": results.drain["events/s"] / results.naive_events_per_s,
        "model b256 sparse / dense": s["model b256 sparse users/s"] / s["model b256 dense users/s"],
        "model b1 sparse / dense": s["model b1 sparse users/s"] / s["model b1 dense users/s"],
        "model b256 / b1 (sparse)": s["model b256 sparse users/s"] / s["model b1 sparse users/s"],
        "batch encoder / codec": s["encode (batch encoder) lists/s"] / s["encode (codec) lists/s"],
        # Model vs the other stage limits (events or lists per second over users per second):
        # how many times faster than the model each of the worker's other stages is.
        **{
            f"{name} / model b256 sparse": s[name] / s["model b256 sparse users/s"]
            for name in ("consume events/s", "decode events/s", "state events/s", "encode+produce lists/s")
        },
    }
    (out_dir / "bench.json").write_text(json.dumps(asdict(results), indent=1))
    (out_dir / "bench.md").write_text(markdown(results))
    plot(results, out_dir / "bench.png")
    say(table(results))
    say(f"wrote {out_dir / 'bench.json'}, bench.md (the tables for README) and bench.png")
    return results


def table(results: Results) -> str:
    lines = [f"{'stage limit (each stage alone)':<44}{'per second':>14}"]
    lines += [f"{name:<44}{value:>14,.0f}" for name, value in results.stages.items()]
    d = results.drain
    wall = d["seconds first event to all committed"]
    loop_stages = ("decode", "state", "inference", "publish", "commit")  # one after another in the loop
    lines += [
        "",
        f"{'worker draining the backlog, events/s':<44}{d['events/s']:>14,.0f}",
        f"{'naive per-event consumer, events/s':<44}{results.naive_events_per_s:>14,.0f}",
        f"{'state per user, bytes':<44}{results.state_bytes['interactions bytes']:>14,.0f}"
        f"  ({results.config['recent_items']} interactions; {results.state_bytes['arrays bytes']:,.0f} with counters, "
        f"{results.state_bytes['allocated bytes']:,.0f} allocated in all)",
        f"  per flush while draining: {d['users per batch']:.0f} users/batch, batch_wait {d['batch_wait ms']:.1f} ms, "
        f"inference {d['inference ms']:.1f} ms, publish {d['publish ms']:.1f} ms, commit {d['commit ms']:.1f} ms",
        "  share of the drain's wall time: "
        + ", ".join(f"{stage} {d[f'{stage} s total'] / wall:.0%}" for stage in loop_stages)
        + f", the rest (polling, loop) {max(1 - sum(d[f'{stage} s total'] for stage in loop_stages) / wall, 0):.0%}",
        "",
        f"{'rate':>6} {'achieved':>9} {'lists':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'gen p50':>8} {'gen p99':>8} {'users/batch':>12} {'wait':>6} {'infer':>6} {'publ':>6} {'commit':>7}",
    ]
    for r in results.rates:
        lines.append(
            f"{r['rate']:>6g} {r['achieved events/s']:>9,.0f} {r['lists']:>7} {r['latency p50 ms']:>8.1f} "
            f"{r['latency p90 ms']:>8.1f} {r['latency p99 ms']:>8.1f} {r['latency max ms']:>8.1f} "
            f"{r['event to generated_at p50 ms']:>8.1f} {r['event to generated_at p99 ms']:>8.1f} "
            f"{r['users per batch']:>12.1f} {r['batch_wait ms']:>6.1f} {r['inference ms']:>6.1f} "
            f"{r['publish ms']:>6.1f} {r['commit ms']:>7.1f}"
        )
    lines += [
        f"{'rate':>6} {'cpu % of a core: worker':>24} {'broker':>7} {'producer':>9} {'reader':>7} {'machine busy':>13}"
    ]
    for r in results.rates:
        lines.append(
            f"{r['rate']:>6g} {r['cpu % worker']:>24.0f} {r['cpu % broker']:>7.0f} {r['cpu % producer']:>9.0f} "
            f"{r['cpu % reader']:>7.0f} {r['cpu % machine']:>12.0f}%"
        )
    lines += [
        "(latency: reader has the list - event_time of its newest event; gen: generated_at - event_time;",
        " wait/infer/publ/commit: the worker's mean ms per batch or flush over the run, from its /metrics)",
        "",
    ]
    lines += [f"{name:<44}{value:>13.2f}x" for name, value in results.ratios.items()]
    return "\n".join(lines)


def markdown(results: Results) -> str:
    """The headline figures as Markdown tables (what README's Results section shows)."""
    s, d = results.stages, results.drain
    rows = [
        "| figure | dense input | sparse (embedding bag) | sparse / dense |",
        "|---|---:|---:|---:|",
    ]
    for b in (1, 256):
        dense, sparse = s[f"model b{b} dense users/s"], s[f"model b{b} sparse users/s"]
        rows.append(f"| model only, batch {b}, users/s | {dense:,.0f} | {sparse:,.0f} | {sparse / dense:.2f}x |")
    rows += [
        "",
        "| figure | per second |",
        "|---|---:|",
        *[f"| stage limit: {name} | {value:,.0f} |" for name, value in s.items()],
        f"| **worker draining the backlog, events/s** | **{d['events/s']:,.0f}** |",
        f"| naive per-event consumer, events/s | {results.naive_events_per_s:,.0f} |",
        f"| drain / naive | {results.ratios['drain / naive']:.1f}x |",
        f"| state per user: {results.config['recent_items']} interactions / with counters / all allocated, bytes | "
        f"{results.state_bytes['interactions bytes']:,.0f} / {results.state_bytes['arrays bytes']:,.0f} / "
        f"{results.state_bytes['allocated bytes']:,.0f} |",
        "",
        "| rate (events/s) | lists | p50 ms | p90 ms | p99 ms | generated_at p50 / p99 ms | users/batch | "
        "batch wait / inference / publish / commit ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.rates:
        rows.append(
            f"| {r['rate']:g} | {r['lists']:,} | {r['latency p50 ms']:.0f} | {r['latency p90 ms']:.0f} | "
            f"{r['latency p99 ms']:.0f} | {r['event to generated_at p50 ms']:.0f} / "
            f"{r['event to generated_at p99 ms']:.0f} | {r['users per batch']:.0f} | {r['batch_wait ms']:.0f} / "
            f"{r['inference ms']:.0f} / {r['publish ms']:.0f} / {r['commit ms']:.0f} |"
        )
    rows += [
        "",
        "| rate (events/s) | CPU, % of one core: worker | broker | load producer | reader | whole machine busy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.rates:
        rows.append(
            f"| {r['rate']:g} | {r['cpu % worker']:.0f} | {r['cpu % broker']:.0f} | {r['cpu % producer']:.0f} | "
            f"{r['cpu % reader']:.0f} | {r['cpu % machine']:.0f}% of {results.environment['cpus']} cores |"
        )
    return "\n".join(rows) + "\n"


def plot(results: Results, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for r in results.rates:
        lat = np.sort(np.asarray(r["latencies ms"]))
        if len(lat):
            left.plot(
                lat,
                np.arange(1, len(lat) + 1) / len(lat),
                label=f"{r['rate']:g} events/s (p99 {r['latency p99 ms']:.0f} ms)",
            )
    left.axvline(50, color="grey", linestyle="--", linewidth=1)
    left.text(50, 0.02, " 50 ms", color="grey")
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("event_time → list at the reader (ms, log scale)")
    left.set_ylabel("fraction of lists")
    left.set_title("Latency distribution per rate")
    left.grid(alpha=0.3)
    left.legend()
    bars = {**{k: v for k, v in results.stages.items()}, "worker drain events/s": results.drain["events/s"],
            "naive consumer events/s": results.naive_events_per_s}  # fmt: skip
    names = list(bars)
    colors = ["tab:blue"] * len(results.stages) + ["tab:green", "tab:red"]
    right.barh(names, [bars[n] for n in names], color=colors)
    right.set_xscale("log")
    right.invert_yaxis()
    right.set_xlabel("per second (log scale)")
    right.set_title("Stage limits (blue), worker drain (green), naive (red)")
    right.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quick_or_full(quick: bool, **overrides: Any) -> BenchConfig:
    config = BenchConfig.quick() if quick else BenchConfig()
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
