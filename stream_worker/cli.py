"""`streamrec`: the command line. One command per job; settings from STREAMREC_* or options.

streamrec kafka start            a local single-node broker on 127.0.0.1:9092
streamrec topics create          user-events, recommendations, model-updates, user-events.dlq
streamrec train --ratings ml-100k/u.data --out runs/models
streamrec worker --model runs/models
streamrec trainer --model-dir runs/models
streamrec replay --synthetic --events 20000 --rate 2000
streamrec tail
streamrec demo                   all of the above, end to end, then stops everything
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from stream_worker.checkpoints_cli import checkpoints_app
from stream_worker.config import ConfigError, Settings, load_settings
from stream_worker.kafka_local import DEFAULT_HOME, KafkaStartError, LocalKafka
from stream_worker.models_cli import app as models_app

app = typer.Typer(help="A streaming recommender on Kafka with generative models.", no_args_is_help=True)
kafka_app = typer.Typer(help="A local single-node Apache Kafka (KRaft) for development and tests.")
topics_app = typer.Typer(help="The topics streamrec reads and writes.")
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")
app.add_typer(models_app, name="models")
app.add_typer(checkpoints_app, name="checkpoints")  # checkpoints on the Kafka topic (checkpoints_cli.py)
console = Console(stderr=True)

Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers", "-b", help="Kafka host:port (default: STREAMREC_BOOTSTRAP_SERVERS or 127.0.0.1:9092)"
    ),
]


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        _fail(str(exc), 2)


def _fail(message: str, code: int) -> NoReturn:
    """One sentence on stderr, no traceback, and a non-zero exit."""
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True)
    raise typer.Exit(code)


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM/SIGINT only ask the loop to stop; a second Ctrl+C interrupts for real."""

    def handler(signum: int, _frame: object) -> None:
        console.print(f"{signal.Signals(signum).name}: finishing the batch in flight, then stopping")
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# --- kafka / topics ----------------------------------------------------------------------


@kafka_app.command("start")
def kafka_start(
    port: Annotated[int, typer.Option(help="Client port; the controller takes port + 1")] = 9092,
    home: Annotated[Path, typer.Option(help="Jars, data and logs")] = DEFAULT_HOME,
) -> None:
    """Start the local broker (fetching its jars with Maven the first time); returns once it is ready."""
    broker = LocalKafka(port=port, home=home)
    try:
        started = broker.start()
    except KafkaStartError as exc:
        _fail(str(exc), 1)
    console.print(f"Kafka {'started' if started else 'is already running'} on {broker.bootstrap} ({broker.base})")


@kafka_app.command("stop")
def kafka_stop(
    port: Annotated[int, typer.Option()] = 9092,
    home: Annotated[Path, typer.Option()] = DEFAULT_HOME,
) -> None:
    """Stop the local broker (its data stays for the next start)."""
    stopped = LocalKafka(port=port, home=home).stop()
    console.print(f"Kafka on 127.0.0.1:{port} {'stopped' if stopped else 'was not running'}")


@topics_app.command("create")
def topics_create(
    bootstrap_servers: Bootstrap = None,
    partitions: Annotated[int | None, typer.Option(help="Default: STREAMREC_TOPIC_PARTITIONS or 3")] = None,
) -> None:
    """Create the four topics; existing ones are left as they are."""
    from stream_worker.topics import ensure_topics

    settings = _settings(bootstrap_servers=bootstrap_servers, topic_partitions=partitions)
    for topic, outcome in ensure_topics(settings).items():
        console.print(f"{topic}: {outcome}")


# --- models --------------------------------------------------------------------------------


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Model directory; the checkpoint goes to <out>/v<N>/")],
    ratings: Annotated[Path | None, typer.Option(help="MovieLens u.data, ratings.dat or ratings.csv")] = None,
    from_topic: Annotated[bool, typer.Option(help="Train on the events topic's window instead")] = False,
    epochs: Annotated[int | None, typer.Option(help="Default: the model's own")] = None,
    kind: Annotated[str, typer.Option(help="multvae, multdae, cfgan, ease, itemknn, pop")] = "multvae",
    min_rating: Annotated[float | None, typer.Option(help="Keep ratings >= this (default: all)")] = None,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Train a model and save a versioned checkpoint.

    streamrec train --ratings ../shared/data/ml-100k/u.data --out runs/ml100k --epochs 50
    """
    _logging()
    if (ratings is None) == (not from_topic):
        _fail("Give exactly one of --ratings PATH or --from-topic.", 2)
    from models import checkpoint
    from models.train import train_model

    if from_topic:
        from stream_worker.trainer import train_from_topic

        settings = _settings(
            bootstrap_servers=bootstrap_servers, trainer_model_kind=kind, trainer_epochs=epochs, model_dir=out
        )
        trained = train_from_topic(settings, out)
        if trained is None:
            _fail("Too few events in the window; nothing trained (see STREAMREC_TRAINER_MIN_EVENTS).", 1)
        p = trained.metadata.promotion  # the validation figure: the freshest held-out events of the window
        console.print(
            f"saved {trained.path}: {p['metric']}={p['candidate']:.4f} on {p['eval_users']} held-out users; "
            f"{'promoted (now serving)' if trained.promoted else 'NOT promoted'}: {trained.reason}"
        )
        return
    assert ratings is not None
    from models.data import load_ratings

    if not ratings.is_file():
        _fail(f"{ratings} is not a file.", 2)
    data = load_ratings(ratings, min_rating=min_rating)
    model, report = train_model(kind, data.matrix, epochs=epochs)
    path = checkpoint.save(
        model,
        out,
        item_ids=data.item_ids,
        name=kind,
        training={
            "source": f"ratings:{ratings.name}",
            "events": int(data.matrix.nnz),
            "users": len(data.user_ids),
            "seconds": report.seconds,
        },
    )
    console.print(f"saved {path} ({len(data.user_ids)} users, {len(data.item_ids)} items, {report.seconds:.1f}s)")


@app.command()
def evaluate(
    protocol: Annotated[str, typer.Option(help="cfgan-ml100k, chrono-loo or strong")],
    models: Annotated[str, typer.Option(help="Comma-separated kinds")] = "multvae,multdae,cfgan,ease,itemknn,pop",
    ratings: Annotated[Path | None, typer.Option(help="Ratings file for the strong protocol")] = None,
    seeds: Annotated[int, typer.Option(help="Repeat with this many seeds")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG comparing models")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder of the MovieLens splits")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Offline evaluation under a published protocol; prints a table.

    streamrec evaluate --protocol chrono-loo --models multvae,ease,pop --json runs/chrono.json
    """
    from models import evaluate as evaluation

    evaluation.main(
        protocol=protocol,
        models=[m.strip() for m in models.split(",") if m.strip()],
        ratings=ratings,
        seeds=seeds,
        json_out=json_out,
        plot_out=plot,
        data_dir=data_dir or evaluation.DEFAULT_DATA_DIR,
        device=device,
    )


# --- streaming -----------------------------------------------------------------------------


@app.command()
def worker(
    model: Annotated[Path | None, typer.Option(help="Checkpoint folder or model directory (newest version)")] = None,
    bootstrap_servers: Bootstrap = None,
    metrics_port: Annotated[int | None, typer.Option(help="0 = no HTTP endpoint")] = None,
    verbose: bool = False,
) -> None:
    """Consume user events, keep user state, publish fresh top-K recommendations.

    streamrec worker --model runs/models
    """
    from stream_worker.app import StopIncomplete, Worker

    _logging(verbose)
    settings = _settings(bootstrap_servers=bootstrap_servers, model_dir=model, metrics_port=metrics_port)
    try:
        job = Worker(settings)
    except Exception as exc:  # a bad model path or checkpoint: one sentence, no traceback
        _fail(f"Cannot start the worker: {exc}", 2)
    _stop_on_signals(job.stop)
    try:
        job.run()
    except StopIncomplete as exc:
        _fail(f"The worker stopped before the broker acknowledged everything: {exc}", 1)


@app.command()
def trainer(
    model_dir: Annotated[Path | None, typer.Option(help="Where versions are written and read")] = None,
    bootstrap_servers: Bootstrap = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between rounds")] = None,
    once: Annotated[bool, typer.Option(help="One round, then exit")] = False,
) -> None:
    """Retrain periodically from the events topic and announce each new checkpoint.

    streamrec trainer --model-dir runs/models --interval 300
    """
    from stream_worker.trainer import Trainer

    _logging()
    settings = _settings(bootstrap_servers=bootstrap_servers, model_dir=model_dir, trainer_interval_s=interval)
    try:
        job = Trainer(settings)
    except ValueError as exc:
        _fail(str(exc), 2)
    _stop_on_signals(job.stop)
    job.run(once=once)


@app.command()
def replay(
    ratings: Annotated[Path | None, typer.Option(help="MovieLens ratings file to publish, oldest first")] = None,
    synthetic: Annotated[bool, typer.Option(help="Publish the synthetic world's events instead")] = False,
    events: Annotated[int, typer.Option(help="How many events (synthetic; or at most, for --ratings)")] = 10_000,
    rate: Annotated[float, typer.Option(help="Events per second at most; 0 = as fast as possible")] = 1000.0,
    users: Annotated[int, typer.Option(help="Synthetic users")] = 500,
    items: Annotated[int, typer.Option(help="Synthetic items")] = 400,
    seed: Annotated[int, typer.Option(help="Synthetic seed")] = 1,
    keep_time: Annotated[bool, typer.Option(help="Keep the file's timestamps instead of 'now'")] = False,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Publish user events (Avro) onto the events topic at a bounded rate.

    streamrec replay --ratings ../shared/data/ml-100k/u.data --rate 5000
    """
    from stream_worker.replay import publish_events, ratings_events, retimed
    from stream_worker.synthetic import SyntheticWorld

    if (ratings is None) == (not synthetic):
        _fail("Give exactly one of --ratings PATH or --synthetic.", 2)
    settings = _settings(bootstrap_servers=bootstrap_servers)
    if ratings is not None:
        stream = ratings_events(ratings, limit=events)
    else:
        world = SyntheticWorld(n_users=users, n_items=items)
        stream = world.events(events, seed=seed, start_ms=int(time.time() * 1000))
    if not keep_time:
        stream = retimed(stream, lambda: int(time.time() * 1000))
    sent = publish_events(
        settings, stream, rate=rate or None, on_progress=lambda n: console.print(f"\r{n} events", end="")
    )
    console.print(f"\npublished {sent} events to {settings.events_topic}")


@app.command()
def forget(
    user_id: Annotated[str, typer.Argument(help="The user id, exactly as in the events' key")],
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Forget a user: their state, their recommendations (tombstones) and, for training, their past events.

    streamrec forget alice
    """
    from stream_worker.replay import publish_forget

    settings = _settings(bootstrap_servers=bootstrap_servers)
    try:
        publish_forget(settings, user_id)
    except RuntimeError as exc:
        _fail(str(exc), 1)
    console.print(f"asked the workers to forget {user_id!r} (a tombstone on {settings.events_topic})")


@app.command()
def tail(
    bootstrap_servers: Bootstrap = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record, not the newest")] = False,
    max_records: Annotated[int | None, typer.Option("--max", help="Stop after this many")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many idle seconds")] = None,
    items: Annotated[int, typer.Option(help="Items shown per user")] = 5,
) -> None:
    """Print recommendations as they are published, one line per user.

    streamrec tail --from-beginning --max 10
    """
    from stream_worker.tail import follow, format_recommendation

    settings = _settings(bootstrap_servers=bootstrap_servers)
    stop = threading.Event()
    _stop_on_signals(stop)
    for record in follow(settings, from_beginning=from_beginning, idle_timeout_s=timeout, stop=stop, limit=max_records):
        print(format_recommendation(record, items), flush=True)


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Live events to stream")] = 20_000,
    rate: Annotated[float, typer.Option(help="Live events per second")] = 2_000.0,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Everything end to end on a synthetic world: broker, topics, first model, worker, trainer,
    live events with progress, example recommendations; then stops all it started."""
    from stream_worker.demo import run_demo

    _settings(bootstrap_servers=bootstrap_servers)  # fail fast on bad settings
    try:
        code = run_demo(bootstrap_servers=bootstrap_servers, events=events, rate=rate, console=console)
    except KafkaStartError as exc:
        _fail(str(exc), 1)
    raise typer.Exit(code)


# --- benchmark -----------------------------------------------------------------------------


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="A smoke test of every phase in under a minute")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda, for the model stages and the worker")] = "cpu",
    out: Annotated[Path, typer.Option(help="Where bench.json, bench.png and worker.log go")] = Path("runs/bench"),
    seconds_per_rate: Annotated[float | None, typer.Option(help="Seconds of events at each rate")] = None,
    bootstrap_servers: Annotated[
        str | None, typer.Option("--bootstrap-servers", "-b", help="Use this broker instead of starting one")
    ] = None,
) -> None:
    """End-to-end speed on a Kafka broker: stage limits, a naive consumer, the worker draining a
    backlog, latency at 250/500/1000 events/s; prints a table, writes JSON and a PNG.

    streamrec bench --quick
    """
    from stream_worker.bench import quick_or_full, run_bench

    if device not in ("cpu", "cuda"):
        _fail(f"--device must be cpu or cuda, not {device!r}.", 2)
    import torch
    from confluent_kafka import KafkaException

    if device == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda was asked for but torch sees no GPU; run with --device cpu.", 2)
    config = quick_or_full(quick, device=device, seconds_per_rate=seconds_per_rate)
    try:
        run_bench(config, out, bootstrap_servers=bootstrap_servers)
    except KafkaStartError as exc:
        _fail(str(exc), 1)
    except (KafkaException, RuntimeError) as exc:  # e.g. the broker went away, the worker exited
        _fail(f"The benchmark stopped: {exc}", 1)
