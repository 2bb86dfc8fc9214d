"""Durable state on the real broker: users survive kill -9 and rebalances exactly, and are
forgotten on request.

The fault-injection tests (marker `faults`) stream events at a fixed rate while workers are
killed or join and leave, then check what a fault-free run would give: committed offsets at
the end, every user's newest list reflecting exactly the events sent for them (no event applied
twice, none missed), none of their recent items recommended, and in exactly-once mode no list
seen twice by a read_committed reader. Bounded in events and time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from stream_worker.devtools.replay import publish_events, publish_forget
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.kafka.local import free_port
from stream_worker.kafka.topics import ensure_topics
from tests.integration.kafka_helpers import (
    committed_offsets,
    drained,
    newest_per_user,
    read_recommendations,
    read_topic,
    running_worker,
    train_synthetic_model,
    wait_until,
)

pytestmark = pytest.mark.integration

WORLD = SyntheticWorld(n_users=200, n_items=150, seed=5)
RECENT = 100  # STREAMREC_STATE_RECENT_ITEMS (the default)


@pytest.fixture
def base_settings(make_settings, tmp_path):
    def make(**overrides):
        settings = make_settings(top_k=10, model_dir=tmp_path / "models", max_batch_size=64, **overrides)
        ensure_topics(settings, partitions=3)
        if not (tmp_path / "models").exists():
            train_synthetic_model(WORLD, settings.model_dir, epochs=5)
        return settings

    return make


def events_now(n: int, seed: int):
    return list(WORLD.events(n, seed=seed, start_ms=int(time.time() * 1000) - n))


def assert_exact(settings, events, *, exactly_once: bool = False) -> None:
    """What a fault-free run gives: each user's newest list reflects exactly their events, once each."""
    lists = read_recommendations(settings)
    newest = newest_per_user(lists)
    sent: dict[str, list] = defaultdict(list)
    for event in events:
        sent[event.user_id].append(event)
    for user_id, history in sent.items():
        record = newest[user_id]
        assert record["events_reflected"] == len(history), (
            f"{user_id}: {record['events_reflected']} events reflected, {len(history)} sent"
        )
        assert record["last_event_id"] == history[-1].event_id
        recent = {e.item_id for e in history[-RECENT:]}
        assert not recent & {i["item_id"] for i in record["items"]}, f"{user_id} was offered a recent item"
    if exactly_once:
        counts: dict[str, list[int]] = defaultdict(list)
        for record in lists:
            counts[record["user_id"]].append(record["events_reflected"])
        for user_id, seen in counts.items():
            assert seen == sorted(set(seen)), f"{user_id}: a read_committed reader saw a list twice: {seen}"


class WorkerProcess:
    """`streamrec worker` as a separate process (so it can be SIGKILLed), with /readyz on its own port.
    Every one started is killed at the end of its test, whatever happened (`_no_worker_left`)."""

    started: ClassVar[list[WorkerProcess]] = []

    def __init__(self, settings, instance_id: str, log_dir: Path) -> None:
        WorkerProcess.started.append(self)
        self.port = free_port()
        env = {
            **os.environ,
            **settings.model_copy(update={"metrics_port": self.port, "instance_id": instance_id}).to_env(),
        }
        self.log = open(log_dir / f"{instance_id}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stream_worker", "worker"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=90)
        self.log.close()
        return code


@pytest.fixture(autouse=True)
def _no_worker_left():
    yield
    for worker in WorkerProcess.started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(timeout=30)
    WorkerProcess.started.clear()


class LiveStream:
    """Events at a fixed rate from a thread until `finish()` (or until `events` run out: the bound),
    so a slow machine cannot end the stream before the faults it must overlap."""

    def __init__(self, settings, events, rate: float) -> None:
        self.stop, self.sent = threading.Event(), 0
        self.thread = threading.Thread(target=self._run, args=(settings, events, rate), daemon=True)
        self.thread.start()

    def _run(self, settings, events, rate: float) -> None:
        self.sent = publish_events(settings, events, rate=rate, stop=self.stop)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def finish(self) -> int:
        """Stop producing; returns how many events were sent (the first n of `events`, in order)."""
        self.stop.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the live stream did not stop"
        return self.sent


def progress(settings) -> int:
    """Events committed so far, over all partitions (a coordinator moving meanwhile is retried)."""
    seen: list[int] = []
    wait_until(lambda: seen.append(sum(max(o, 0) for o in committed_offsets(settings).values())) is None, 30, "offsets")
    return seen[-1]


@pytest.mark.faults
@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_a_worker_killed_three_times_mid_stream_loses_and_doubles_nothing(base_settings, tmp_path, guarantee):
    settings = base_settings(processing_guarantee=guarantee)
    events = events_now(21_500, seed=1)
    publish_events(settings, events[:1500])
    stream = LiveStream(settings, events[1500:], rate=100)  # live until the third restart (at most 200 s)
    recovery: list[float] = []
    worker = WorkerProcess(settings, "worker-0", tmp_path)
    for round_ in range(3):
        before = progress(settings)
        wait_until(lambda b=before: progress(settings) > b + 200, 90, f"progress before kill {round_ + 1}")
        assert stream.is_alive(), "the stream ended before the kill: it would not be mid-stream"
        worker.kill()
        killed = time.monotonic()
        committed_at_kill = progress(settings)
        worker = WorkerProcess(settings, "worker-0", tmp_path)  # same instance id: static membership
        wait_until(worker.ready, 60, f"the restarted worker to be ready ({round_ + 1})")
        wait_until(lambda c=committed_at_kill: progress(settings) > c, 60, f"progress after restart {round_ + 1}")
        recovery.append(time.monotonic() - killed)
    events = events[: 1500 + stream.finish()]  # what was sent
    wait_until(lambda: drained(settings), 120, "the last worker to drain the topic")
    assert worker.stop() == 0
    print(f"\n{guarantee}: killed -9, then committing again after {', '.join(f'{s:.1f}s' for s in recovery)}")
    assert_exact(settings, events, exactly_once=guarantee == "exactly-once")


@pytest.mark.faults
def test_a_rebalance_from_one_to_three_workers_and_back_keeps_every_user_exact(base_settings, tmp_path):
    settings = base_settings()
    events = events_now(16_500, seed=2)
    publish_events(settings, events[:1500])
    stream = LiveStream(settings, events[1500:], rate=75)  # live until the workers have left (at most 200 s)
    first = WorkerProcess(settings, "worker-0", tmp_path)
    wait_until(lambda: progress(settings) > 1500, 90, "the first worker to make progress")
    others = [WorkerProcess(settings, f"worker-{n}", tmp_path) for n in (1, 2)]
    wait_until(lambda: all(w.ready() for w in [first, *others]), 90, "three workers with a partition each")
    before = progress(settings)
    wait_until(lambda: progress(settings) > before + 150, 60, "progress with three workers")
    assert stream.is_alive(), "the stream ended before the workers left: the rebalance was not mid-stream"
    assert [w.stop() for w in others] == [0, 0]
    events = events[: 1500 + stream.finish()]  # what was sent
    wait_until(lambda: drained(settings), 120, "the one remaining worker to drain the topic")
    assert first.stop() == 0
    assert_exact(settings, events)


def test_forgetting_a_user_erases_their_state_and_list_and_starts_them_afresh(base_settings):
    settings = base_settings()
    events = events_now(1000, seed=3)
    target = events[0].user_id
    publish_events(settings, events)
    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 60, "the worker to drain the history")
        assert target in worker.state
        publish_forget(settings, target)
        wait_until(lambda: target not in worker.state, 30, "the worker to forget the user")
        wait_until(lambda: drained(settings), 30, "the deletion request to be committed")
        assert worker.metrics.users_forgotten._value.get() == 1

    for topic in (settings.recommendations_topic, settings.state_topic):
        last = [r for r in read_topic(settings, topic) if r.key == target.encode()][-1]
        assert last.value is None, f"no tombstone for {target} on {topic}"

    fresh = events_now(1, seed=4)[0]
    fresh = type(fresh)(fresh.event_id + "-fresh", target, fresh.item_id, "CLICK", None, int(time.time() * 1000))
    publish_events(settings, [fresh])
    with running_worker(settings):  # a new worker: the state topic must not bring the user back
        wait_until(lambda: drained(settings), 60, "the new event to be processed")
    record = newest_per_user(read_recommendations(settings))[target]
    assert record["events_reflected"] == 1 and record["last_event_id"] == fresh.event_id


def test_a_restarted_worker_restores_its_users_before_it_processes_their_events(base_settings):
    settings = base_settings()
    events = events_now(3000, seed=5)
    publish_events(settings, events[:2000])
    with running_worker(settings):
        wait_until(lambda: drained(settings), 60, "the first worker to drain")
    publish_events(settings, events[2000:])
    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 60, "the second worker to drain")
        restored = worker.metrics.state_restored_users._value.get()
        assert restored == len({e.user_id for e in events[:2000]})
        assert worker.metrics.state_restore._sum.get() > 0
    assert_exact(settings, events)
