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

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from stream_worker.cli.checkpoints import checkpoints_app
from stream_worker.cli.models import app as models_app
from stream_worker.config import ConfigError, Settings, load_settings
from stream_worker.kafka.local import DEFAULT_HOME, KafkaStartError, LocalKafka

# Exit codes: 2 = a usage error (a bad option, setting or input file), 1 = a runtime error
# (Kafka away, a taken port, a failed round), 130 = interrupted (Ctrl+C) before finishing.
USAGE, RUNTIME, INTERRUPTED = 2, 1, 130


class _App(typer.Typer):
    """typer.Typer with one rule for every command: a mistake ends in one sentence on stderr
    and exit code 2 (usage) or 1 (runtime); the traceback only with --verbose."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if _verbose():
                raise
            message, code = explain(exc)
            _print_error(message)
            sys.exit(code)


app = _App(
    help="A streaming recommender on Kafka with generative models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
kafka_app = typer.Typer(help="A local single-node Apache Kafka (KRaft) for development and tests.")
topics_app = typer.Typer(help="The topics streamrec reads and writes.")
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")
app.add_typer(models_app, name="models")
app.add_typer(checkpoints_app, name="checkpoints")  # checkpoints on the Kafka topic (cli/checkpoints.py)
# A pipe or a log file has no width: rich would assume 80 columns and cut or wrap lines there.
_TTY = sys.stderr.isatty()
console = Console(stderr=True, width=None if _TTY else 120, soft_wrap=not _TTY)
_VERBOSE = {"on": False}

Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers", "-b", help="Kafka host:port (default: STREAMREC_BOOTSTRAP_SERVERS or 127.0.0.1:9092)"
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs, librdkafka's log and tracebacks")]


def _version(value: bool) -> None:
    if value:
        print(f"streamrec {metadata.version('streamrec')}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Verbose = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """A streaming recommender on Kafka with generative models."""
    _VERBOSE["on"] = _VERBOSE["on"] or verbose


def _verbose() -> bool:
    return _VERBOSE["on"] or any(arg in ("--verbose", "-v") for arg in sys.argv[1:])


def explain(exc: BaseException) -> tuple[str, int]:
    """The one sentence and exit code for an exception that reached the command line."""
    if isinstance(exc, _loaded_classes(USAGE_ERRORS)):
        return str(exc), USAGE
    if isinstance(exc, _loaded_classes(RUNTIME_ERRORS)):
        return str(exc), RUNTIME
    if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError) and exc.filename:
        return f"{exc.filename}: {exc.strerror.lower()} — check the path", USAGE
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"a port this command listens on is taken ({exc.strerror}) — stop the other process", RUNTIME
    name = type(exc).__name__
    return f"unexpected {name}: {exc} — run again with --verbose for the traceback", RUNTIME


# Exceptions whose message is already the one sentence a person needs, by module and name.
USAGE_ERRORS = [
    ("stream_worker.config", "ConfigError"),
    ("stream_worker.kafka.check", "KafkaConfigError"),
    ("stream_worker.devtools.tail", "TitlesFileError"),
    ("models.data", "RatingsFileError"),
    ("models.checkpoint", "CheckpointError"),
]
RUNTIME_ERRORS = [
    ("stream_worker.kafka.check", "KafkaUnavailable"),
    ("stream_worker.kafka.local", "KafkaStartError"),
    ("stream_worker.devtools.replay", "PublishError"),
]


def _loaded_classes(names: list[tuple[str, str]]) -> tuple[type, ...]:
    """The classes among `names` whose module is imported: an exception of a class whose module
    was never imported cannot have been raised, and importing models.* would load torch (seconds)."""
    return tuple(getattr(sys.modules[module], name) for module, name in names if module in sys.modules)


def _print_error(message: str) -> None:
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True, highlight=False)


def _settings(verbose: bool = False, **overrides: Any) -> Settings:
    from stream_worker.kafka.check import quiet

    try:
        return quiet(load_settings(**overrides), verbose or _verbose())
    except ConfigError as exc:
        _fail(str(exc), USAGE)


def _fail(message: str, code: int) -> NoReturn:
    """One sentence on stderr, no traceback, and a non-zero exit."""
    _print_error(message)
    raise typer.Exit(code)


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose or _verbose() else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _stop_on_signals(stop: threading.Event, second: str = "interrupted again: exiting now") -> None:
    """SIGTERM/SIGINT only ask the work to stop; a second Ctrl+C exits at once (code 130),
    after printing `second` (what is lost), without running any cleanup that could claim
    a clean stop."""

    def handler(signum: int, _frame: object) -> None:
        console.print(f"{signal.Signals(signum).name}: finishing the work in flight, then stopping")
        stop.set()
        signal.signal(signal.SIGINT, again)

    def again(_signum: int, _frame: object) -> None:
        console.print(second)
        sys.stderr.flush()
        os._exit(INTERRUPTED)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _shown(path: Path) -> str:
    """`path` relative to the current folder when it lies below it (shorter, and no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _need_kafka(settings: Settings, *topics: str) -> None:
    """One bounded check that the cluster answers and `topics` exist (else one sentence, exit 1/2)."""
    from stream_worker.kafka.check import check_kafka

    check_kafka(settings, topics)


def _need_model_kind(kind: str, where: str) -> None:
    from models.base import REGISTRY

    if kind not in REGISTRY:
        _fail(f"{where}={kind} is not a model kind; choose one of {', '.join(sorted(REGISTRY))}", USAGE)


def _need_free_port(host: str, port: int, variable: str, option: str | None = None) -> None:
    """Fail with the port's name when another process listens there (before any slow start-up)."""
    if not port:
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            how = f"{option} N or {variable}=N" if option else f"{variable}=N"
            _fail(
                f"port {port} ({variable}) on {host} is taken ({exc.strerror}) — another worker or trainer? "
                f"stop it, or choose another port with {how} (0 = no HTTP endpoint)",
                RUNTIME,
            )


# --- kafka / topics ----------------------------------------------------------------------

KafkaPort = Annotated[
    int | None,
    typer.Option(
        help="Client port; the controller takes port + 1 "
        "(default: the port of STREAMREC_BOOTSTRAP_SERVERS when it is 127.0.0.1/localhost, else 9092)"
    ),
]
KafkaHome = Annotated[Path, typer.Option(help="Jars, data and logs (per port: <home>/broker-<port>/)")]


def _local_port(port: int | None) -> int:
    """--port, else the port of STREAMREC_BOOTSTRAP_SERVERS when it names this machine, else 9092."""
    from stream_worker.kafka.check import local_port

    if port is not None:
        return port
    return local_port(_settings().bootstrap_servers) or 9092


@kafka_app.command("start")
def kafka_start(port: KafkaPort = None, home: KafkaHome = DEFAULT_HOME) -> None:
    """Start the local broker (fetching its jars with Maven the first time); returns once it is ready.

    streamrec kafka start --port 19092   (then STREAMREC_BOOTSTRAP_SERVERS=127.0.0.1:19092)
    """
    broker = LocalKafka(port=_local_port(port), home=home)
    try:
        started = broker.start()
    except KafkaStartError as exc:
        _fail(str(exc), RUNTIME)
    console.print(
        f"Kafka {'started' if started else 'is already running'} on {broker.bootstrap} "
        f"(controller on port {broker.controller_port}; data and log in {_shown(broker.base)})"
    )


@kafka_app.command("stop")
def kafka_stop(port: KafkaPort = None, home: KafkaHome = DEFAULT_HOME) -> None:
    """Stop the local broker (its data stays for the next start).

    streamrec kafka stop --port 19092
    """
    broker = LocalKafka(port=_local_port(port), home=home)
    if broker.stop():
        console.print(f"Kafka on {broker.bootstrap} stopped")
        return
    others = sorted(
        int(folder.name.removeprefix("broker-"))
        for folder in Path(home).glob("broker-*")
        if folder.name.removeprefix("broker-").isdigit()
        and LocalKafka(port=int(folder.name.removeprefix("broker-")), home=home).running()
    )
    elsewhere = (
        f"; a broker started from {_shown(home)} runs on port {', '.join(map(str, others))} "
        "(streamrec kafka stop --port N)"
        if others
        else ""
    )
    console.print(f"nothing to stop: Kafka on {broker.bootstrap} was not running (started by streamrec){elsewhere}")


@topics_app.command("create")
def topics_create(
    bootstrap_servers: Bootstrap = None,
    partitions: Annotated[int | None, typer.Option(help="Default: STREAMREC_TOPIC_PARTITIONS or 3")] = None,
) -> None:
    """Create streamrec's topics; existing ones are left as they are.

    streamrec topics create --partitions 6
    """
    from stream_worker.kafka.topics import ensure_topics

    settings = _settings(bootstrap_servers=bootstrap_servers, topic_partitions=partitions)
    _need_kafka(settings)
    for topic, outcome in ensure_topics(settings).items():
        console.print(f"{topic}: {outcome}")


# --- models --------------------------------------------------------------------------------

TRAIN_HOLDOUT_USERS = 0.1  # share of users `train --ratings` holds out for its validation figure
TRAIN_EVAL_K = 20


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Model directory; the checkpoint goes to <out>/v<N>/")],
    ratings: Annotated[Path | None, typer.Option(help="MovieLens u.data, ratings.dat or ratings.csv")] = None,
    from_topic: Annotated[bool, typer.Option(help="Train on the events topic's window instead")] = False,
    epochs: Annotated[int | None, typer.Option(help="Default: the model's own (multvae: 200)")] = None,
    kind: Annotated[str, typer.Option(help="multvae, multdae, cfgan, ease, itemknn or pop")] = "multvae",
    min_rating: Annotated[float | None, typer.Option(help="Keep ratings >= this (default: all)")] = None,
    bootstrap_servers: Bootstrap = None,
    verbose: Verbose = False,
) -> None:
    """Train a model and save a versioned checkpoint; shows progress and ends with a validation figure.

    streamrec train --ratings ../shared/data/ml-100k/u.data --out runs/ml100k --epochs 50
    """
    _logging(verbose)
    if (ratings is None) == (not from_topic):
        _fail("Give exactly one of --ratings PATH or --from-topic.", USAGE)
    _need_model_kind(kind, "--kind")
    from models import checkpoint
    from models.report import format_metrics

    if from_topic:
        from stream_worker.trainer.round import train_from_topic

        settings = _settings(
            verbose, bootstrap_servers=bootstrap_servers, trainer_model_kind=kind, trainer_epochs=epochs, model_dir=out
        )
        _need_kafka(settings, settings.events_topic)
        trained = train_from_topic(settings, out)
        if trained is None:
            _fail("Too few events in the window; nothing trained (see STREAMREC_TRAINER_MIN_EVENTS).", RUNTIME)
        p = trained.metadata.promotion  # the validation figure: the freshest held-out events of the window
        console.print(
            f"saved {trained.path}: {p['metric']}={p['candidate']:.4f} on {p['eval_users']} held-out users; "
            f"{'promoted (now serving)' if trained.promoted else 'NOT promoted'}: {trained.reason}"
        )
        return
    assert ratings is not None
    from models.data import load_ratings
    from models.evaluate import holdout_metrics
    from models.splits import split_users_holdout
    from models.train import train_model

    if not ratings.is_file():
        _fail(f"{ratings} is not a file (--ratings).", USAGE)
    data = load_ratings(ratings, min_rating=min_rating)
    # Some users are held out (their rows never train the model) for an honest validation figure.
    rows, fold_in, held_out = split_users_holdout(data.matrix, TRAIN_HOLDOUT_USERS, seed=0)
    console.print(
        f"training {kind} on {rows.shape[0]} users x {len(data.item_ids)} items "
        f"({len(data.user_ids) - rows.shape[0]} users held out for validation)"
    )
    k = min(TRAIN_EVAL_K, len(data.item_ids))
    with _EpochProgress(console, fold_in, held_out, k) as progress:
        model, report = train_model(kind, rows, epochs=epochs, on_progress=progress.update)
    metrics = holdout_metrics(model, fold_in, held_out, k=k)
    metrics["train_seconds"] = report.seconds
    if report.curve:
        metrics.update({f"final_{k}": v for k, v in report.curve[-1].items() if k.startswith("loss")})
    path = checkpoint.save(
        model,
        out,
        item_ids=data.item_ids,
        name=kind,
        metrics=metrics,
        training={
            "source": f"ratings:{ratings.name}",
            "events": int(rows.nnz),
            "users": rows.shape[0],
            "seconds": report.seconds,
        },
    )
    console.print(f"saved {path} ({len(data.user_ids)} users, {len(data.item_ids)} items, {report.seconds:.1f} s)")
    console.print(f"validation on {metrics['users']:.0f} held-out users: {format_metrics(metrics)}")


class _EpochProgress:
    """`train`'s progress: a bar with epoch, validation NDCG and time left on a terminal; a line
    per tenth of the epochs when output goes to a pipe or a file."""

    SAMPLE_USERS = 500  # validation users scored per epoch (all of them at the end)

    def __init__(self, out: Console, fold_in: Any, held_out: Any, k: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.out, self.fold_in, self.held_out = out, fold_in[: self.SAMPLE_USERS], held_out[: self.SAMPLE_USERS]
        self.k = k
        self.bar = Progress(
            TextColumn("epoch {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[figure]}"),
            TimeRemainingColumn(),
            console=out,
            transient=True,
        )
        self.task = self.bar.add_task("train", total=None, figure="")

    def __enter__(self) -> _EpochProgress:
        if self.out.is_terminal:
            self.bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.bar.live.is_started:  # stopping a bar that never started prints an empty line
            self.bar.stop()

    def update(self, progress: Any) -> None:
        from models.evaluate import holdout_metrics

        figure = holdout_metrics(progress.model, self.fold_in, self.held_out, k=self.k)[f"ndcg@{self.k}"]
        loss = "" if progress.loss is None else f"loss {progress.loss:.4g}  "
        text = f"{loss}validation ndcg@{self.k} {figure:.4f}"
        self.bar.update(self.task, total=progress.epochs, completed=progress.epoch, figure=text)
        step = max(progress.epochs // 10, 1)
        if not self.out.is_terminal and (progress.epoch % step == 0 or progress.epoch == progress.epochs):
            self.out.print(
                f"epoch {progress.epoch}/{progress.epochs}  {text}  {progress.seconds:.0f} s, "
                f"about {progress.seconds_left:.0f} s left",
                highlight=False,
            )


@app.command()
def evaluate(
    protocol: Annotated[str, typer.Option(help="cfgan-ml100k, chrono-loo or strong")],
    models: Annotated[str, typer.Option(help="Comma-separated kinds")] = "multvae,multdae,cfgan,ease,itemknn,pop",
    ratings: Annotated[Path | None, typer.Option(help="Ratings file; needed by (only) the strong protocol")] = None,
    seeds: Annotated[int, typer.Option(help="Repeat with this many seeds")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG comparing models")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder of the MovieLens splits (default: STREAMREC_DATA_DIR or ../shared/data)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Offline evaluation under a published protocol; prints a table.

    streamrec evaluate --protocol chrono-loo --models multvae,ease,pop --json runs/chrono.json
    """
    from models import evaluate as evaluation
    from models.base import REGISTRY

    if protocol not in evaluation.PROTOCOLS:
        _fail(f"--protocol {protocol} is unknown; choose one of {', '.join(evaluation.PROTOCOLS)}", USAGE)
    kinds = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in kinds if m not in REGISTRY]
    if unknown or not kinds:
        _fail(f"--models: {', '.join(unknown) or 'none given'} unknown; choose from {', '.join(REGISTRY)}", USAGE)
    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device {device} is unknown; choose auto, cpu or cuda", USAGE)
    if protocol == "strong":
        if ratings is None:
            _fail("--protocol strong needs --ratings PATH (u.data, ratings.dat or ratings.csv)", USAGE)
        if not ratings.is_file():
            _fail(f"{ratings} is not a file (--ratings).", USAGE)
    folder = data_dir or evaluation.DEFAULT_DATA_DIR
    if protocol != "strong" and not Path(folder).is_dir():
        _fail(
            f"{folder} does not exist (--data-dir, or STREAMREC_DATA_DIR): it must hold the MovieLens splits "
            "(ml-100k-cfgan-split/, ml-100k-chrono-loo/); see ../shared/data/README.md",
            USAGE,
        )
    evaluation.main(
        protocol=protocol,
        models=kinds,
        ratings=ratings,
        seeds=seeds,
        json_out=json_out,
        plot_out=plot,
        data_dir=folder,
        device=device,
    )


# --- streaming -----------------------------------------------------------------------------


@app.command()
def worker(
    model: Annotated[
        Path | None,
        typer.Option(help="Checkpoint folder or model directory, newest version (default: STREAMREC_MODEL_DIR)"),
    ] = None,
    bootstrap_servers: Bootstrap = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Port of /metrics, /healthz, /readyz (default: STREAMREC_METRICS_PORT or 9464); 0 = none"),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Consume user events, keep user state, publish fresh top-K recommendations.

    While Kafka cannot be reached at start-up the worker waits, saying why once a minute.

    streamrec worker --model runs/models
    """
    from stream_worker.kafka.check import wait_for_kafka
    from stream_worker.worker.loop import StopIncomplete, Worker

    _logging(verbose)
    settings = _settings(verbose, bootstrap_servers=bootstrap_servers, model_dir=model, metrics_port=metrics_port)
    _need_free_port(settings.metrics_host, settings.metrics_port, "STREAMREC_METRICS_PORT", "--metrics-port")
    try:
        job = Worker(settings)
    except Exception as exc:  # a bad model path or checkpoint: one sentence, no traceback
        if _verbose():
            raise
        _fail(f"Cannot start the worker: {exc}", USAGE)
    _stop_on_signals(
        job.stop,
        "interrupted again: exiting now (code 130) without finishing the shutdown; "
        "events not yet committed are replayed by the next worker",
    )
    topics = (
        settings.events_topic,
        settings.recommendations_topic,
        settings.dlq_topic,
        settings.model_updates_topic,
        settings.state_topic,
    )
    if not wait_for_kafka(settings, job.stop, logging.getLogger("streamrec.worker"), topics=topics):
        console.print("stopped before Kafka answered; nothing was consumed")
        return
    try:
        job.run()
    except StopIncomplete as exc:
        _fail(f"The worker stopped before the broker acknowledged everything: {exc}", RUNTIME)


@app.command()
def trainer(
    model_dir: Annotated[
        Path | None, typer.Option(help="Where versions are written and read (default: STREAMREC_MODEL_DIR)")
    ] = None,
    bootstrap_servers: Bootstrap = None,
    interval: Annotated[
        float | None, typer.Option(help="Seconds between rounds (default: STREAMREC_TRAINER_INTERVAL_S or 300)")
    ] = None,
    once: Annotated[bool, typer.Option(help="One round, then exit")] = False,
    verbose: Verbose = False,
) -> None:
    """Retrain periodically from the events topic and announce each new checkpoint.

    streamrec trainer --model-dir runs/models --interval 300
    """
    from stream_worker.trainer.service import Trainer

    _logging(verbose)
    settings = _settings(verbose, bootstrap_servers=bootstrap_servers, model_dir=model_dir, trainer_interval_s=interval)
    _need_model_kind(settings.trainer_model_kind, "STREAMREC_TRAINER_MODEL_KIND")
    if not once:
        _need_free_port(settings.metrics_host, settings.trainer_metrics_port, "STREAMREC_TRAINER_METRICS_PORT")
    _need_kafka(settings, settings.events_topic, settings.model_updates_topic)
    try:
        job = Trainer(settings)
    except ValueError as exc:
        _fail(str(exc), USAGE)
    _stop_on_signals(job.stop, "interrupted again: exiting now; the round in progress is lost")
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
    verbose: Verbose = False,
) -> None:
    """Publish user events (Avro) onto the events topic at a bounded rate.

    Ctrl+C stops producing, waits for the broker to acknowledge what was sent and says how many
    were; the exit code is then 130 (0 when every event was published).

    streamrec replay --ratings ../shared/data/ml-100k/u.data --rate 5000
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from stream_worker.devtools.replay import publish_events, ratings_events, retimed
    from stream_worker.devtools.synthetic import SyntheticWorld

    if (ratings is None) == (not synthetic):
        _fail("Give exactly one of --ratings PATH or --synthetic.", USAGE)
    if ratings is not None and not ratings.is_file():
        _fail(f"{ratings} is not a file (--ratings).", USAGE)
    settings = _settings(verbose, bootstrap_servers=bootstrap_servers)
    if ratings is not None:
        stream = ratings_events(ratings, limit=events)  # reads the file: a bad one fails here, before Kafka
        first = next(stream, None)
        if first is None:
            _fail(f"{ratings} holds no rating (--ratings).", USAGE)
        stream = _chain(first, stream)
    else:
        world = SyntheticWorld(n_users=users, n_items=items)
        stream = world.events(events, seed=seed, start_ms=int(time.time() * 1000))
    if not keep_time:
        stream = retimed(stream, lambda: int(time.time() * 1000))
    _need_kafka(settings, settings.events_topic)
    stop = threading.Event()
    _stop_on_signals(stop, "interrupted again: exiting now without waiting for acknowledgements")
    bar = Progress(
        TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TextColumn("events"), TimeRemainingColumn(),
        console=console, transient=True,
    )  # fmt: skip
    task = bar.add_task("replay", total=events)
    sent = [0]

    def progress(n: int) -> None:
        if not console.is_terminal and n % 10_000 == 0 and n > sent[0]:
            console.print(f"{n} events sent")  # a pipe or a log: a line now and then instead of the bar
        sent[0] = n
        bar.update(task, completed=n)

    if console.is_terminal:
        bar.start()
    try:
        acknowledged = publish_events(settings, stream, rate=rate or None, on_progress=progress, stop=stop)
    finally:
        if bar.live.is_started:
            bar.stop()
    if stop.is_set():
        console.print(
            f"interrupted after {sent[0]} events: {acknowledged} acknowledged by Kafka on {settings.events_topic}, "
            f"{sent[0] - acknowledged} not"
        )
        raise typer.Exit(INTERRUPTED)
    console.print(f"published {acknowledged} events to {settings.events_topic}")


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


@app.command()
def forget(
    user_id: Annotated[str, typer.Argument(help="The user id, exactly as in the events' key")],
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Forget a user: their state, their recommendations (tombstones) and, for training, their past events.

    streamrec forget alice
    """
    from stream_worker.devtools.replay import publish_forget

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
    max_records: Annotated[int | None, typer.Option("--max", help="Stop after this many (default: never)")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many idle seconds (default: never)")] = None,
    items: Annotated[int, typer.Option(help="Items shown per user")] = 5,
    titles: Annotated[
        Path | None, typer.Option(help="Show item titles from MovieLens u.item, movies.dat or movies.csv")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Print recommendations as they are published, one line per user, under a header.

    streamrec tail --from-beginning --max 10 --titles ../shared/data/ml-100k/u.item
    """
    from stream_worker.devtools.tail import HEADER, LEGEND, follow, format_recommendation, load_titles

    names = load_titles(titles) if titles is not None else None
    settings = _settings(verbose, bootstrap_servers=bootstrap_servers)
    _need_kafka(settings, settings.recommendations_topic)
    stop = threading.Event()
    _stop_on_signals(stop)
    console.print(LEGEND, style="dim", highlight=False, soft_wrap=True)
    print(HEADER, flush=True)
    for record in follow(settings, from_beginning=from_beginning, idle_timeout_s=timeout, stop=stop, limit=max_records):
        print(format_recommendation(record, items, names), flush=True)


@app.command()
def demo(
    events: Annotated[
        int, typer.Option(help="Live events to stream at least; streaming goes on until the second model is serving")
    ] = 20_000,
    rate: Annotated[float, typer.Option(help="Live events per second")] = 2_000.0,
    report: Annotated[
        Path | None, typer.Option(help="Where the PNG report goes (default: runs/demo/report.png)")
    ] = None,
    bootstrap_servers: Bootstrap = None,
    verbose: Verbose = False,
) -> None:
    """Everything end to end on a synthetic world: broker, topics, first model, worker, trainer,
    live events with progress, example recommendations, a PNG report; then stops all it started
    and deletes its topics."""
    from stream_worker.devtools.demo import run_demo

    _settings(verbose, bootstrap_servers=bootstrap_servers)  # fail fast on bad settings
    try:
        code = run_demo(
            bootstrap_servers=bootstrap_servers,
            events=events,
            rate=rate,
            console=console,
            verbose=verbose or _verbose(),
            report=report,
        )
    except KafkaStartError as exc:
        _fail(str(exc), RUNTIME)
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
    from stream_worker.devtools.bench import quick_or_full, run_bench

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


def main() -> None:
    """`python -m stream_worker`."""
    app(prog_name="streamrec")
