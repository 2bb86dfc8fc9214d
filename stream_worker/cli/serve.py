"""The long-running roles: `streamrec worker`, `streamrec trainer`, and `streamrec forget` (a deletion request)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from stream_worker.cli.common import (
    RUNTIME,
    USAGE,
    Bootstrap,
    Verbose,
    app,
    cli_settings,
    console,
    fail,
    need_free_port,
    need_kafka,
    need_model_kind,
    setup_logging,
    stop_on_signals,
    verbose_on,
)


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

    setup_logging(verbose)
    settings = cli_settings(verbose, bootstrap_servers=bootstrap_servers, model_dir=model, metrics_port=metrics_port)
    need_free_port(settings.metrics_host, settings.metrics_port, "STREAMREC_METRICS_PORT", "--metrics-port")
    try:
        job = Worker(settings)
    except Exception as exc:  # a bad model path or checkpoint: one sentence, no traceback
        if verbose_on():
            raise
        fail(f"Cannot start the worker: {exc}", USAGE)
    stop_on_signals(
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
        fail(f"The worker stopped before the broker acknowledged everything: {exc}", RUNTIME)


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

    setup_logging(verbose)
    settings = cli_settings(
        verbose, bootstrap_servers=bootstrap_servers, model_dir=model_dir, trainer_interval_s=interval
    )
    need_model_kind(settings.trainer_model_kind, "STREAMREC_TRAINER_MODEL_KIND")
    if not once:
        need_free_port(settings.metrics_host, settings.trainer_metrics_port, "STREAMREC_TRAINER_METRICS_PORT")
    need_kafka(settings, settings.events_topic, settings.model_updates_topic)
    try:
        job = Trainer(settings)
    except ValueError as exc:
        fail(str(exc), USAGE)
    stop_on_signals(job.stop, "interrupted again: exiting now; the round in progress is lost")
    job.run(once=once)


@app.command()
def forget(
    user_id: Annotated[str, typer.Argument(help="The user id, exactly as in the events' key")],
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Forget a user: their state, their recommendations (tombstones) and, for training, their past events.

    streamrec forget alice
    """
    from stream_worker.devtools.replay import publish_forget

    settings = cli_settings(bootstrap_servers=bootstrap_servers)
    try:
        publish_forget(settings, user_id)
    except RuntimeError as exc:
        fail(str(exc), 1)
    console.print(f"asked the workers to forget {user_id!r} (a tombstone on {settings.events_topic})")
