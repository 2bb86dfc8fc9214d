"""`streamrec train` (a model from a ratings file or the event topic) and `streamrec evaluate` (offline protocols)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from stream_worker.cli.common import (
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
    setup_logging,
)

TRAIN_HOLDOUT_USERS = 0.1  # share of users `train --ratings` holds out for its validation figure


TRAIN_EVAL_K = 20


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Model directory; the checkpoint goes to <out>/v<N>/")],
    ratings: Annotated[Path | None, typer.Option(help="MovieLens u.data, ratings.dat or ratings.csv")] = None,
    from_topic: Annotated[bool, typer.Option(help="Train on the events topic's window instead")] = False,
    epochs: Annotated[int | None, typer.Option(help="Default: the model's own (multvae: 200)")] = None,
    kind: Annotated[str, typer.Option(help="multvae, multdae, cfgan, sasrec, hstu, ease, itemknn or pop")] = "multvae",
    min_rating: Annotated[float | None, typer.Option(help="Keep ratings >= this (default: all)")] = None,
    bootstrap_servers: Bootstrap = None,
    verbose: Verbose = False,
) -> None:
    """Train a model and save a versioned checkpoint; shows progress and ends with a validation figure.

    streamrec train --ratings ../shared/data/ml-100k/u.data --out runs/ml100k --epochs 50
    """
    setup_logging(verbose)
    if (ratings is None) == (not from_topic):
        fail("Give exactly one of --ratings PATH or --from-topic.", USAGE)
    need_model_kind(kind, "--kind")
    from models import checkpoint
    from models.report import format_metrics

    if from_topic:
        from stream_worker.trainer.round import train_from_topic

        settings = cli_settings(
            verbose, bootstrap_servers=bootstrap_servers, trainer_model_kind=kind, trainer_epochs=epochs, model_dir=out
        )
        need_kafka(settings, settings.events_topic)
        trained = train_from_topic(settings, out)
        if trained is None:
            fail("Too few events in the window; nothing trained (see STREAMREC_TRAINER_MIN_EVENTS).", RUNTIME)
        p = trained.metadata.promotion  # the validation figure: the freshest held-out events of the window
        console.print(
            f"saved {trained.path}: {p['metric']}={p['candidate']:.4f} on {p['eval_users']} held-out users; "
            f"{'promoted (now serving)' if trained.promoted else 'NOT promoted'}: {trained.reason}"
        )
        return
    assert ratings is not None
    from models.base import REGISTRY
    from models.data import load_ratings
    from models.evaluate import holdout_metrics
    from models.presets import SERVED
    from models.sequences import Sequences
    from models.splits import split_users_holdout, split_users_holdout_in_time
    from models.train import train_model

    if not ratings.is_file():
        fail(f"{ratings} is not a file (--ratings).", USAGE)
    data = load_ratings(ratings, min_rating=min_rating)
    # Some users are held out (their rows never train the model) for an honest validation figure.
    sequences = None
    if REGISTRY[kind].reads_order:  # a sequence model learns each user's events in time order
        if data.timestamps is None:
            fail(f"--kind {kind} reads the order of events, and {ratings} has no timestamps.", USAGE)
        seqs = Sequences.from_csr_with_times(data.matrix, data.timestamps)
        rows, sequences, held_out = split_users_holdout_in_time(seqs, TRAIN_HOLDOUT_USERS, seed=0)
        fold_in, n_train = sequences.to_csr(), len(rows)  # the newest 20% of a held-out user's events are targets
    else:
        rows, fold_in, held_out = split_users_holdout(data.matrix, TRAIN_HOLDOUT_USERS, seed=0)
        n_train = rows.shape[0]
    console.print(
        f"training {kind} on {n_train} users x {len(data.item_ids)} items "
        f"({len(data.user_ids) - n_train} users held out for validation)"
    )
    k = min(TRAIN_EVAL_K, len(data.item_ids))
    overrides = SERVED.get(kind, {})  # models/presets.py; --epochs replaces the preset's epoch count
    with _EpochProgress(console, fold_in, held_out, k, sequences) as progress:
        model, report = train_model(kind, rows, epochs=epochs, overrides=overrides, on_progress=progress.update)
    metrics = holdout_metrics(model, fold_in, held_out, k=k, sequences=sequences)
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
            "events": int(data.matrix.nnz),
            "users": n_train,
            "seconds": report.seconds,
        },
    )
    console.print(f"saved {path} ({len(data.user_ids)} users, {len(data.item_ids)} items, {report.seconds:.1f} s)")
    console.print(f"validation on {metrics['users']:.0f} held-out users: {format_metrics(metrics)}")


class _EpochProgress:
    """`train`'s progress: a bar with epoch, validation NDCG and time left on a terminal; a line
    per tenth of the epochs when output goes to a pipe or a file."""

    SAMPLE_USERS = 500  # validation users scored per epoch (all of them at the end)

    def __init__(self, out: Console, fold_in: Any, held_out: Any, k: int, sequences: Any = None) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        sample = range(min(self.SAMPLE_USERS, held_out.shape[0]))
        self.out, self.fold_in, self.held_out = out, fold_in[: self.SAMPLE_USERS], held_out[: self.SAMPLE_USERS]
        self.sequences = None if sequences is None else sequences.subset(list(sample))
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

        figures = holdout_metrics(progress.model, self.fold_in, self.held_out, k=self.k, sequences=self.sequences)
        figure = figures[f"ndcg@{self.k}"]
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
    protocol: Annotated[str, typer.Option(help="cfgan-ml100k, chrono-loo, strong or next-item")],
    models: Annotated[str, typer.Option(help="Comma-separated kinds")] = "multvae,multdae,cfgan,ease,itemknn,pop",
    ratings: Annotated[Path | None, typer.Option(help="Ratings file; needed by (only) the strong protocol")] = None,
    interactions: Annotated[
        Path | None, typer.Option(help="next-item: `user item [timestamp]` per line (SASRec's data format)")
    ] = None,
    negatives: Annotated[
        int | None, typer.Option(help="next-item: rank the target against N sampled unseen items (SASRec: 100)")
    ] = None,
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
    streamrec evaluate --protocol next-item --interactions Video.txt --negatives 100 --models sasrec,ease
    """
    from models import evaluate as evaluation
    from models.base import REGISTRY

    if protocol not in evaluation.PROTOCOLS:
        fail(f"--protocol {protocol} is unknown; choose one of {', '.join(evaluation.PROTOCOLS)}", USAGE)
    kinds = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in kinds if m not in REGISTRY]
    if unknown or not kinds:
        fail(f"--models: {', '.join(unknown) or 'none given'} unknown; choose from {', '.join(REGISTRY)}", USAGE)
    if device not in ("auto", "cpu", "cuda"):
        fail(f"--device {device} is unknown; choose auto, cpu or cuda", USAGE)
    if protocol == "strong":
        if ratings is None:
            fail("--protocol strong needs --ratings PATH (u.data, ratings.dat or ratings.csv)", USAGE)
        if not ratings.is_file():
            fail(f"{ratings} is not a file (--ratings).", USAGE)
    if protocol == "next-item":
        if interactions is None:
            fail("--protocol next-item needs --interactions FILE (`user item [timestamp]` per line)", USAGE)
        if not interactions.is_file():
            fail(f"{interactions} is not a file (--interactions).", USAGE)
    elif interactions is not None or negatives is not None:
        fail("--interactions and --negatives belong to --protocol next-item", USAGE)
    if negatives is not None and negatives < 1:
        fail(f"--negatives {negatives}: give the number of sampled items to rank against, e.g. 100", USAGE)
    folder = data_dir or evaluation.DEFAULT_DATA_DIR
    if protocol not in ("strong", "next-item") and not Path(folder).is_dir():
        fail(
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
        interactions=interactions,
        negatives=negatives,
    )
