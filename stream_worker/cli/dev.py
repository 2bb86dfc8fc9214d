"""Developer commands: `streamrec replay`, `tail`, `demo` and `bench`."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from stream_worker.cli.common import (
    INTERRUPTED,
    RUNTIME,
    USAGE,
    Bootstrap,
    Verbose,
    app,
    cli_settings,
    console,
    fail,
    need_kafka,
    need_model_kind,
    stop_on_signals,
    verbose_on,
)
from stream_worker.kafka.local import KafkaStartError


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
        fail("Give exactly one of --ratings PATH or --synthetic.", USAGE)
    if ratings is not None and not ratings.is_file():
        fail(f"{ratings} is not a file (--ratings).", USAGE)
    settings = cli_settings(verbose, bootstrap_servers=bootstrap_servers)
    if ratings is not None:
        stream = ratings_events(ratings, limit=events)  # reads the file: a bad one fails here, before Kafka
        first = next(stream, None)
        if first is None:
            fail(f"{ratings} holds no rating (--ratings).", USAGE)
        stream = _chain(first, stream)
    else:
        world = SyntheticWorld(n_users=users, n_items=items)
        stream = world.events(events, seed=seed, start_ms=int(time.time() * 1000))
    if not keep_time:
        stream = retimed(stream, lambda: int(time.time() * 1000))
    need_kafka(settings, settings.events_topic)
    stop = threading.Event()
    stop_on_signals(stop, "interrupted again: exiting now without waiting for acknowledgements")
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
    settings = cli_settings(verbose, bootstrap_servers=bootstrap_servers)
    need_kafka(settings, settings.recommendations_topic)
    stop = threading.Event()
    stop_on_signals(stop)
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
    kind: Annotated[
        str | None, typer.Option(help="Model kind trained and served (default: STREAMREC_TRAINER_MODEL_KIND)")
    ] = None,
    bootstrap_servers: Bootstrap = None,
    verbose: Verbose = False,
) -> None:
    """Everything end to end on a synthetic world: broker, topics, first model, worker, trainer,
    live events with progress, example recommendations, a PNG report; then stops all it started
    and deletes its topics.

    streamrec demo --kind sasrec
    """
    from stream_worker.devtools.demo import run_demo

    cli_settings(verbose, bootstrap_servers=bootstrap_servers)  # fail fast on bad settings
    if kind is not None:
        need_model_kind(kind, "--kind")
    try:
        code = run_demo(
            bootstrap_servers=bootstrap_servers,
            events=events,
            rate=rate,
            console=console,
            verbose=verbose or verbose_on(),
            report=report,
            kind=kind,
        )
    except KafkaStartError as exc:
        fail(str(exc), RUNTIME)
    raise typer.Exit(code)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="A smoke test of every phase in under a minute")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda, for the model stages and the worker")] = "cpu",
    out: Annotated[Path, typer.Option(help="Where bench.json, bench.png and worker.log go")] = Path("runs/bench"),
    seconds_per_rate: Annotated[float | None, typer.Option(help="Seconds of events at each rate")] = None,
    kind: Annotated[str, typer.Option(help="The model served: multvae, sasrec, hstu, ...")] = "multvae",
    bootstrap_servers: Annotated[
        str | None, typer.Option("--bootstrap-servers", "-b", help="Use this broker instead of starting one")
    ] = None,
) -> None:
    """End-to-end speed on a Kafka broker: stage limits, a naive consumer, the worker draining a
    backlog, latency at 250/500/1000 events/s and at 1000 with a CPU hog beside the worker;
    prints a table, writes JSON and a PNG.

    streamrec bench --quick
    streamrec bench --kind sasrec
    """
    from stream_worker.devtools.bench import quick_or_full, run_bench

    if device not in ("cpu", "cuda"):
        fail(f"--device must be cpu or cuda, not {device!r}.", 2)
    import torch
    from confluent_kafka import KafkaException

    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda was asked for but torch sees no GPU; run with --device cpu.", 2)
    need_model_kind(kind, "--kind")
    config = quick_or_full(quick, device=device, seconds_per_rate=seconds_per_rate, kind=kind)
    try:
        run_bench(config, out, bootstrap_servers=bootstrap_servers)
    except KafkaStartError as exc:
        fail(str(exc), 1)
    except (KafkaException, RuntimeError) as exc:  # e.g. the broker went away, the worker exited
        fail(f"The benchmark stopped: {exc}", 1)
