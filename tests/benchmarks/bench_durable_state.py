"""Durable state figures, measured in one run on a local broker (prints a table):

* drain throughput of one worker, at-least-once vs exactly-once, on the same backlog;
* restore speed: users/s when a worker takes over a state topic of N users.

    .venv/bin/python -m tests.benchmarks.bench_durable_state [--events 30000] [--users 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry

from stream_worker.config import load_settings, topics_under
from stream_worker.devtools.replay import publish_events
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.kafka.clients import new_producer
from stream_worker.kafka.local import DEFAULT_HOME, LocalKafka, free_port
from stream_worker.kafka.topics import committed_and_end_offsets, ensure_topics
from stream_worker.worker import changelog
from stream_worker.worker.loop import Worker
from stream_worker.worker.state import UserSnapshot, UserState
from tests.integration.kafka_helpers import train_synthetic_model


def drain_rate(bootstrap: str, model_dir: Path, events: list, guarantee: str) -> float:
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        bootstrap_servers=bootstrap,
        **topics_under(f"b{run}"),
        group_id=f"b{run}",
        model_dir=model_dir,
        metrics_port=0,
        device="cpu",
        processing_guarantee=guarantee,
    )
    ensure_topics(settings, partitions=3)
    publish_events(settings, events)
    worker = Worker(settings, CollectorRegistry())
    thread = threading.Thread(target=worker.run, daemon=True)
    started = time.perf_counter()
    thread.start()
    while True:
        try:
            committed, ends = committed_and_end_offsets(settings)
            if committed == ends:
                break
        except KafkaException:  # the group coordinator is still loading: ask again
            pass
        time.sleep(0.2)  # a benchmark's polling interval, not a test's synchronisation
    seconds = time.perf_counter() - started
    worker.stop.set()
    thread.join(60)
    return len(events) / seconds


def restore_rate(bootstrap: str, n_users: int, recent: int) -> tuple[float, float]:
    run = uuid.uuid4().hex[:8]
    settings = load_settings(bootstrap_servers=bootstrap, **topics_under(f"r{run}"), group_id=f"r{run}")
    ensure_topics(settings, partitions=3)
    producer = new_producer(settings, **{"linger.ms": 50})
    rng = np.random.default_rng(0)
    for u in range(n_users):
        snap = UserSnapshot(
            user_id=f"user{u}",
            partition=u % 3,
            offset=u,
            events_seen=recent,
            last_event_ms=1_700_000_000_000,
            last_event_id=f"e{u}",
            item_ids=[f"i{j}" for j in rng.integers(0, 20_000, recent)],
            weights=np.ones(recent, np.float32),
            times_ms=np.full(recent, 1_700_000_000_000, np.int64),
        )
        while True:
            try:
                producer.produce(
                    settings.state_topic,
                    changelog.encode(snap, settings.events_topic),
                    snap.user_id.encode(),
                    partition=u % 3,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(120)
    state = UserState(max_users=n_users, recent_items=recent, event_weights=settings.event_weights, decay_half_life_s=0)
    restored = changelog.restore(settings, [0, 1, 2], state, timeout_s=600)
    assert restored.users == n_users == len(state)
    return restored.users / restored.seconds, restored.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="drains per guarantee (the median is reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalKafka(port=free_port(), home=Path(tmp) / "kafka", jars=DEFAULT_HOME / "jars")
        broker.start()
        try:
            world = SyntheticWorld(n_users=2000, n_items=1000, seed=1)
            model_dir = Path(tmp) / "models"
            train_synthetic_model(world, model_dir, epochs=3)
            now = int(time.time() * 1000)
            events = list(world.events(args.events, seed=2, start_ms=now - args.events))
            rates: dict[str, list[float]] = {"at-least-once": [], "exactly-once": []}
            for _ in range(args.rounds):  # interleaved, so warm-up and load drift hit both alike
                for guarantee, measured in rates.items():
                    measured.append(drain_rate(broker.bootstrap, model_dir, events, guarantee))
            alo, eos = (float(np.median(rates[g])) for g in ("at-least-once", "exactly-once"))
            users_s, seconds = restore_rate(broker.bootstrap, args.users, recent=100)
        finally:
            broker.destroy()
    print("| figure | value |\n|---|---|")
    runs = {g: ", ".join(f"{r:,.0f}" for r in rs) for g, rs in rates.items()}
    print(f"| drain, at-least-once (median of {args.rounds}: {runs['at-least-once']}) | {alo:,.0f} events/s |")
    eos_runs = runs["exactly-once"]
    print(f"| drain, exactly-once (median of {args.rounds}: {eos_runs}) | {eos:,.0f} events/s ({eos / alo:.2f}x) |")
    print(f"| restore of {args.users:,} users (100 items each) | {seconds:.1f} s, {users_s:,.0f} users/s |")


if __name__ == "__main__":
    main()
