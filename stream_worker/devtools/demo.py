"""`streamrec demo`: the whole system on a synthetic world, end to end, then cleaned up.

1. a broker: the configured cluster, else the local one (started here, stopped at the end)
2. fresh topics for this run (deleted at the end), so reruns never see old data
3. history: synthetic events onto the events topic; a first Mult-VAE trained from the topic
4. a worker and a trainer as separate processes, as in production
5. live events at a fixed rate (plus a few malformed records for the dead-letter topic),
   with a progress table scraped from the worker's /metrics
6. example recommendations beside each user's true taste, and a quality figure
7. a PNG report (devtools/demo_report.py): latency, throughput, the swap, quality per
   model version and the model's latent space of users
8. SIGTERM to worker and trainer; their exit codes decide ours; the topics are deleted

Longer than 400 lines because the demo is one script whose steps read top to bottom in the order
they run; splitting it would make a reader jump between files to follow one story.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError, KafkaException
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from models.report import format_metrics
from stream_worker.codec import UserEvent
from stream_worker.config import ENV_PREFIX, Settings, load_settings, topics_under
from stream_worker.devtools.demo_report import DemoRecord, write_report
from stream_worker.devtools.replay import publish_events, retimed
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.devtools.tail import follow
from stream_worker.kafka.check import check_kafka, quiet
from stream_worker.kafka.clients import new_admin, new_producer
from stream_worker.kafka.local import LocalKafka, free_port
from stream_worker.kafka.topics import committed_and_end_offsets, ensure_topics, topic_specs
from stream_worker.trainer.round import train_from_topic

HISTORY_EVENTS = 40_000
N_USERS, N_ITEMS = 2_000, 1_000
TRUE_TOP = 50  # a recommendation "hits" when it is among the user's 50 truly preferred items


def run_demo(
    *,
    bootstrap_servers: str | None,
    events: int,
    rate: float,
    console: Console,
    verbose: bool = False,
    report: Path | None = None,
    kind: str | None = None,
) -> int:
    """The demo; returns the exit code. Raises KafkaUnavailable when a named cluster does not answer.

    `kind`: the model kind the trainer trains and the worker serves (default STREAMREC_TRAINER_MODEL_KIND)."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    workdir = Path.cwd() / "runs" / "demo"
    broker = None
    if not (bootstrap_servers or os.environ.get(f"{ENV_PREFIX}BOOTSTRAP_SERVERS")):
        broker = LocalKafka(port=9092)
        if broker.running():
            broker = None  # someone else's; leave it running
            console.print("using the local broker already running on 127.0.0.1:9092")
        else:
            console.print("starting a local Kafka broker on 127.0.0.1:9092 (first time: Maven fetches its jars)")
            broker.start()
    prefix = f"streamrec-demo-{run_id}"
    settings = load_settings(
        bootstrap_servers=bootstrap_servers,
        **topics_under(prefix),
        group_id=prefix,
        model_dir=workdir / "models",
        metrics_port=free_port(),
        trainer_metrics_port=0,
        trainer_min_events=1000,
        trainer_interval_s=3600,
        trainer_epochs=20,
        **({"trainer_model_kind": kind} if kind else {}),
        trainer_torch_threads=1,  # this demo runs everything on one machine: leave the worker a core
    )
    settings = quiet(settings, verbose)
    try:
        check_kafka(settings)
    except Exception:
        if broker is not None:
            broker.stop()
        raise
    shutil.rmtree(workdir, ignore_errors=True)  # the previous run's, now that this one can start
    workdir.mkdir(parents=True)
    processes: list[subprocess.Popen[bytes]] = []
    report_path = report or workdir / "report.png"
    try:
        return _demo(
            settings,
            events=events,
            rate=rate,
            workdir=workdir,
            processes=processes,
            console=console,
            report=report_path,
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        _delete_topics(settings, console)
        if broker is not None:
            console.print("stopping the local broker")
            broker.stop()


def _delete_topics(settings: Settings, console: Console, timeout_s: float = 30) -> None:
    """Delete this run's topics and wait until the cluster confirms it."""
    topics = [spec.topic for spec in topic_specs(settings)]
    admin = new_admin(settings)  # kept alive until the futures are done
    futures = admin.delete_topics(topics, operation_timeout=timeout_s)
    left = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:  # never created: nothing to delete
                left.append(f"{topic} ({exc.args[0].str()})")
        except Exception as exc:  # e.g. the wait timed out
            left.append(f"{topic} ({exc})")
    prefix = settings.events_topic.removesuffix(".user-events")
    if left:
        console.print(f"[yellow]could not delete {', '.join(left)}; delete them by hand[/yellow]", soft_wrap=True)
    else:
        console.print(f"deleted this run's {len(topics)} topics ({prefix}.*)")


def _demo(
    settings: Settings,
    *,
    events: int,
    rate: float,
    workdir: Path,
    processes: list[subprocess.Popen[bytes]],
    console: Console,
    report: Path,
) -> int:
    ensure_topics(settings)
    world = SyntheticWorld(n_users=N_USERS, n_items=N_ITEMS)
    now_ms = int(time.time() * 1000)
    console.rule("1. history and a first model")
    history = world.events(HISTORY_EVENTS, seed=1, start_ms=now_ms - HISTORY_EVENTS, spacing_ms=1)
    publish_events(settings, history)
    console.print(f"published {HISTORY_EVENTS} history events ({N_USERS} users, {N_ITEMS} items)")
    assert settings.model_dir is not None, "the demo sets its model folder"
    first = train_from_topic(settings, settings.model_dir)
    assert first is not None, "the history must be enough to train on"
    console.print(f"trained {first.metadata.name} v{first.metadata.version}: {format_metrics(first.metadata.metrics)}")

    console.rule("2. worker and trainer running; live events")
    log_dir = workdir / "logs"
    log_dir.mkdir()
    processes.append(_spawn(settings, "worker", log_dir))
    progress = Progress(f"http://127.0.0.1:{settings.metrics_port}/metrics")
    _wait_for(lambda: bool(progress.scrape()), 60, "the worker's /metrics endpoint")
    # Live events flow until at least `events` were sent and the trainer's second model
    # (trained on history + live events) has been swapped in while they flowed.
    stop_live, sent = threading.Event(), [0]
    live = retimed(_endless(world, stop_live), lambda: int(time.time() * 1000))
    sender = threading.Thread(
        target=publish_events,
        args=(settings, live),
        kwargs={"rate": rate, "on_progress": lambda n: sent.__setitem__(0, n)},
        daemon=True,
    )
    sender.start()
    processes.append(_spawn(settings, "trainer", log_dir))
    _send_malformed(settings, 5)
    deadline = time.monotonic() + events / rate + 300
    sent_at_swap = None
    failure = None
    with Live(console=console, refresh_per_second=2) as view:
        # ... and then a few more seconds, so that users get lists from the new model.
        while sent_at_swap is None or sent[0] < max(events, sent_at_swap + 2 * rate):
            if sent_at_swap is None and progress.model_version() >= 2:
                sent_at_swap = sent[0]
            view.update(progress.table())
            time.sleep(0.5)  # the refresh period of the table, not a synchronisation
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                failure = f"no second model in time, or a process died; see the logs in {log_dir}"
                break
        stop_live.set()
        sender.join()
        while failure is None and not _drained(settings):
            view.update(progress.table())
            time.sleep(0.5)
            if time.monotonic() > deadline:
                failure = f"the worker did not catch up; see {log_dir / 'worker.log'}"
        view.update(progress.last_busy or progress.table())  # the last table with traffic stays
    if not console.is_terminal:
        console.line()  # a pipe gets the table once, at the end, without a newline after it
    if failure is not None:  # after the table, which a pipe only gets when the live view ends
        console.print(f"[red]{failure}[/red]")
        return 1
    console.print(f"{sent[0]} live events; the worker swapped to model v{progress.model_version()} without stopping")
    model_rate, popular_rate = progress.hit_rates()
    console.print(
        f"online hit-rate@{settings.top_k}: {model_rate:.1%} of events hit the list last sent to the user; "
        f"{popular_rate:.1%} for the most popular items"
    )

    console.rule("3. example recommendations")
    records = _show_examples(settings, world, console)

    console.rule("4. report")
    write_report(report, progress.history, records, world, settings.model_dir, history_seed=1, history=HISTORY_EVENTS)
    console.print(
        f"wrote {_shown(report)}: latency, throughput and the swap; quality per model version; users' latent space"
    )

    console.rule("5. stopping")
    codes = []
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        codes.append(process.wait(timeout=60))
    console.print(f"worker exit code {codes[0]}, trainer exit code {codes[1]}; logs in {_shown(log_dir)}")
    return 0 if codes == [0, 0] else 1


def _shown(path: Path) -> str:
    """`path` relative to the current folder when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _endless(world: SyntheticWorld, stop: threading.Event) -> Iterator[UserEvent]:
    """The world's events, 1000 per seed, until `stop` is set."""
    seed = 2
    while not stop.is_set():
        yield from world.events(1000, seed=seed, start_ms=0)
        seed += 1


def _spawn(settings: Settings, command: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """`streamrec <command>` as a child process configured by STREAMREC_* variables."""
    env = {**os.environ, **settings.to_env()}
    with open(log_dir / f"{command}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "stream_worker", command], env=env, stdout=log, stderr=log)


def _send_malformed(settings: Settings, n: int) -> None:
    producer = new_producer(settings)
    for i in range(n):
        producer.produce(settings.events_topic, b"this is not Avro", f"garbage-{i}".encode())
    producer.flush(10)


def _drained(settings: Settings) -> bool:
    """True when the worker's committed offsets reached the end of every events partition."""
    committed, ends = committed_and_end_offsets(settings, timeout_s=5)
    return committed == ends


class Progress:
    """The worker's figures, scraped from its /metrics, as a table for people."""

    # The last two: online hit-rate of the lists sent, all versions (worker/online_eval.py).
    COLUMNS: tuple[str, ...] = ("events", "events/s", "recs", "recs/s", "p50 latency", "p99 latency", "model", "users")
    COLUMNS += ("DLQ", "hit@K", "popular hit@K")

    def __init__(self, url: str) -> None:
        self.url = url
        self.started = time.monotonic()
        self._previous = (self.started, 0.0, 0.0)  # (time, events, recommendations)
        self._previous_latency: dict[float, float] = {}  # cumulative bucket counts at the last table
        self.history: list[dict[str, float]] = []  # one row per table: the report's time series
        self.last_busy: Table | None = None  # the newest table while events flowed

    def model_version(self) -> int:
        return int(self.scrape().get("streamrec_model_version", 0))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def scrape(self) -> dict:
        """Samples by name (histogram buckets as a list of (le, count)); empty if unreachable."""
        try:
            text = urllib.request.urlopen(self.url, timeout=2).read().decode()
        except OSError:
            return {}
        values: dict = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    values.setdefault(sample.name, []).append((float(sample.labels["le"]), sample.value))
                elif sample.name == "streamrec_dead_letters_total":
                    values[sample.name] = values.get(sample.name, 0) + sample.value
                elif sample.name in ("streamrec_online_events_total", "streamrec_online_hits_total"):
                    name = sample.name + sample.labels.get("recommender", "")  # summed over model versions
                    values[name] = values.get(name, 0) + sample.value
                elif not sample.labels:
                    values[sample.name] = sample.value
        return values

    def table(self) -> Table:
        m, now = self.scrape(), time.monotonic()
        events, recs = m.get("streamrec_events_total", 0), m.get("streamrec_recommendations_total", 0)
        then, events_then, recs_then = self._previous
        self._previous = (now, events, recs)
        # Quantiles over the last refresh period only (as PromQL's rate() would), so the
        # backlog of history events does not hide the live latency.
        buckets = m.get("streamrec_event_to_recommendation_seconds_bucket", [])
        latency = [(le, count - self._previous_latency.get(le, 0.0)) for le, count in buckets]
        self._previous_latency = dict(buckets)
        p50, p99 = quantile(latency, 0.5), quantile(latency, 0.99)
        self.history.append(
            {
                "seconds": now - self.started,
                "events_per_s": (events - events_then) / max(now - then, 1e-6),
                "recs_per_s": (recs - recs_then) / max(now - then, 1e-6),
                "p50_s": p50,
                "p99_s": p99,
                "model_version": m.get("streamrec_model_version", 0),
            }
        )
        table = Table(title=f"streamrec worker, {now - self.started:.0f}s", title_justify="left")
        for column in self.COLUMNS:
            table.add_column(column, justify="right")
        table.add_row(
            f"{events:.0f}",
            f"{(events - events_then) / max(now - then, 1e-6):.0f}",
            f"{recs:.0f}",
            f"{(recs - recs_then) / max(now - then, 1e-6):.0f}",
            _ms(p50),
            _ms(p99),
            f"v{m.get('streamrec_model_version', 0):.0f}",
            f"{m.get('streamrec_users_in_state', 0):.0f}",
            f"{m.get('streamrec_dead_letters_total', 0):.0f}",
            *(f"{rate:.1%}" for rate in self.hit_rates(m)),
        )
        if events > events_then:
            self.last_busy = table
        return table

    def hit_rates(self, m: dict | None = None) -> tuple[float, float]:
        """(model, popularity) online hit-rate@K since the worker started."""
        m = self.scrape() if m is None else m
        events = max(m.get("streamrec_online_events_total", 0), 1)
        return m.get("streamrec_online_hits_totalmodel", 0) / events, m.get(
            "streamrec_online_hits_totalpopularity", 0
        ) / events


def _ms(seconds: float) -> str:
    return "-" if np.isnan(seconds) else f"{seconds * 1000:.0f} ms"  # nan: no list in the period


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """PromQL's histogram_quantile over cumulative (upper bound, count) buckets."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def _show_examples(settings: Settings, world: SyntheticWorld, console: Console) -> list[DemoRecord]:
    """Print a few users' newest lists beside their true taste; return every list published
    (user, model version, share of its items among the user's true top)."""
    newest: dict[str, dict] = {}
    records = []
    for record in follow(settings, from_beginning=True, idle_timeout_s=3):
        newest[record["user_id"]] = record
        truth = set(world.true_top(int(record["user_id"][1:]), TRUE_TOP))
        items = [item["item_id"] for item in record["items"]]
        records.append(DemoRecord(record["user_id"], record["model_version"], _overlap(truth, items)))
    hits, random_hits = [], TRUE_TOP / world.n_items
    for user_id, record in newest.items():
        truth = set(world.true_top(int(user_id[1:]), TRUE_TOP))
        hits.append(_overlap(truth, [item["item_id"] for item in record["items"]]))
    for user_id in sorted(newest)[:5]:
        record = newest[user_id]
        truth = set(world.true_top(int(user_id[1:]), TRUE_TOP))
        shown = " ".join(
            f"[green]{i['item_id']}[/green]" if i["item_id"] in truth else i["item_id"] for i in record["items"][:8]
        )
        console.print(
            f"{user_id}  {record['model_name']} v{record['model_version']}  "
            f"{record['events_reflected']} events  {shown}",
            highlight=False,
        )
    console.print(
        f"{len(newest)} users got recommendations; on average {np.mean(hits):.0%} of their items are among "
        f"their true top {TRUE_TOP} (green) - {random_hits:.0%} for random items",
        highlight=False,
    )
    return records


def _overlap(truth: set[str], items: list[str]) -> float:
    return len(truth.intersection(items)) / max(len(items), 1)


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)
