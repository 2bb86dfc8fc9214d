"""`streamrec models`: the versions in a model directory, and which one serves.

    streamrec models list --model-dir runs/models
    streamrec models promote 3 --model-dir runs/models
    streamrec models rollback --model-dir runs/models

`promote` and `rollback` change `serving.json` (see `models.checkpoint`) and announce the
version on the model-updates topic, so running workers swap to it within seconds; a worker
that starts later loads it from the directory. Announcing a version older than the serving
one is a rollback (`action="rollback"`), the only announcement workers move down for.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stream_worker.cli.common import USAGE, cli_settings, fail
from stream_worker.config import Settings
from stream_worker.kafka.clients import new_producer

if TYPE_CHECKING:
    from models.checkpoint import CheckpointMetadata

app = typer.Typer(help="Model versions in a model directory: list, promote, roll back.", no_args_is_help=True)
console = Console()
console_err = Console(stderr=True)

ModelDir = Annotated[Path | None, typer.Option("--model-dir", help="Model directory (default: STREAMREC_MODEL_DIR)")]
Bootstrap = Annotated[
    str | None, typer.Option("--bootstrap-servers", "-b", help="Kafka host:port (default: STREAMREC_BOOTSTRAP_SERVERS)")
]


# models.checkpoint imports torch: imported inside the commands, so `streamrec --help` stays quick.


def model_dir_settings(model_dir: Path | None, bootstrap_servers: str | None = None) -> tuple[Settings, Path]:
    """The settings and the model directory, which must exist (else one sentence, exit 2)."""
    settings = cli_settings(model_dir=model_dir, bootstrap_servers=bootstrap_servers)
    if settings.model_dir is None or not Path(settings.model_dir).is_dir():
        usage_error(f"No model directory at {settings.model_dir}: pass --model-dir DIR or set STREAMREC_MODEL_DIR.")
    return settings, Path(settings.model_dir)


def usage_error(message: str) -> NoReturn:
    fail(message, USAGE)


@app.command("list")
def list_versions(model_dir: ModelDir = None) -> None:
    """Every version: when, metric against the serving model at the time, decision, and which serves now."""
    from models import checkpoint
    from models.checkpoint import CheckpointError

    _, folder = model_dir_settings(model_dir)
    try:
        serving = checkpoint.serving_version(folder)
        served_before = {int(e["version"]) for e in (checkpoint.serving_record(folder) or {}).get("history", [])}
    except CheckpointError as exc:
        usage_error(str(exc))
    if serving is None and checkpoint.versions(folder):
        serving = checkpoint.versions(folder)[-1]  # no serving record: the newest folder serves
    table = Table(title=str(folder))
    for column in ("version", "kind", "created (UTC)", "events", "metric", "candidate", "serving then", "status"):
        table.add_column(column)
    for version in checkpoint.versions(folder):
        meta = checkpoint.read_metadata(checkpoint.version_dir(folder, version))
        p = meta.promotion
        if version == serving:
            status = "[green]SERVING[/green]"
        elif p.get("promoted") is False and version not in served_before:
            status = "rejected"
        else:
            status = "promoted before" if version in served_before else "-"
        table.add_row(
            f"v{version}",
            meta.kind,
            datetime.fromtimestamp(meta.created_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            str(meta.training.get("events", "")),
            p.get("metric", ""),
            f"{p['candidate']:.4f}" if p.get("candidate") is not None else "",
            f"{p['serving']:.4f} (v{p['serving_version']})" if p.get("serving") is not None else "",
            status,
        )
    console.print(table)


@app.command()
def promote(
    version: Annotated[int, typer.Argument(help="The version to serve")],
    model_dir: ModelDir = None,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Serve VERSION (whatever its evaluation said) and announce it to the workers."""
    from models import checkpoint
    from models.checkpoint import CheckpointError

    settings, folder = model_dir_settings(model_dir, bootstrap_servers)
    try:
        current = checkpoint.serving_version(folder)
    except CheckpointError as exc:  # a damaged serving.json: say so; promoting rewrites it
        console_err.print(f"[yellow]{escape(str(exc))}[/yellow]", soft_wrap=True)
        current = None
    action = "rollback" if current is not None and version < current else "promote"
    _serve(settings, version, action=action, reason="promoted by hand with `streamrec models promote`")


@app.command()
def rollback(model_dir: ModelDir = None, bootstrap_servers: Bootstrap = None) -> None:
    """Go back to the newest version older than the serving one that has served before, and announce it."""
    from models import checkpoint
    from models.checkpoint import CheckpointError

    settings, folder = model_dir_settings(model_dir, bootstrap_servers)
    try:
        target = checkpoint.rollback_target(folder)
    except CheckpointError as exc:
        usage_error(str(exc))
    _serve(settings, target, action="rollback", reason="rolled back with `streamrec models rollback`")


def _serve(settings: Settings, version: int, *, action: str, reason: str) -> None:
    from models import checkpoint

    assert settings.model_dir is not None, "model_dir_settings checked it"
    folder = Path(settings.model_dir)
    if version not in checkpoint.versions(folder):
        usage_error(f"{folder} has no complete version {version}; see `streamrec models list`.")
    path = checkpoint.version_dir(folder, version)
    meta = checkpoint.read_metadata(path)
    checkpoint.record_serving(folder, version, action=action, reason=reason)
    announce_version(settings, meta, path, action=action)
    console.print(f"v{version} now serves ({action}); announced on {settings.model_updates_topic}")


def announce_version(settings: Settings, meta: CheckpointMetadata, path: Path, *, action: str) -> None:

    from stream_worker.channel.announce import announce

    training = meta.training
    window = (training["window_start_ms"], training["window_end_ms"]) if "window_start_ms" in training else None
    try:
        announce(
            new_producer(settings),
            settings,
            meta,
            path,
            events_trained=int(training.get("events", 0)),
            window=window,
            metrics={k: float(v) for k, v in meta.metrics.items()},
            action=action,
        )
    except Exception as exc:  # the serving record changed; workers that start now load it anyway
        usage_error(
            f"v{meta.version} is recorded as serving in {settings.model_dir}, but announcing it failed ({exc}); "
            "running workers keep their model: check Kafka and run the command again."
        )
