"""`streamrec checkpoints publish|fetch|list`: checkpoints on the Kafka topic, for people and init containers.

streamrec checkpoints publish runs/models/v000001          # a model trained offline, for every pod
streamrec checkpoints fetch --name multvae --to /models    # newest version -> /models/multvae/v<N>/
streamrec checkpoints list
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

T = TypeVar("T")

checkpoints_app = typer.Typer(help="Checkpoints on the Kafka checkpoints topic (no shared volume needed).")


@checkpoints_app.command("publish")
def publish(
    folder: Annotated[Path, typer.Argument(help="A checkpoint folder (weights.safetensors + metadata.json)")],
) -> None:
    """Publish a checkpoint folder to the checkpoints topic and print its kafka:// URI."""
    from stream_worker.channel.checkpoint_topic import publish_checkpoint
    from stream_worker.cli.common import cli_settings

    settings = cli_settings()
    uri = _or_fail(lambda: publish_checkpoint(settings, folder))
    typer.echo(uri)


@checkpoints_app.command("fetch")
def fetch(
    to: Annotated[Path, typer.Option(help="Destination; the checkpoint lands in <to>/<name>/v<N>/")],
    name: Annotated[str | None, typer.Option(help="Fetch the newest version of this model name")] = None,
    uri: Annotated[str | None, typer.Option(help="Fetch exactly this kafka:// URI")] = None,
    sha256: Annotated[str | None, typer.Option(help="Expected SHA-256 of the weights")] = None,
    missing_ok: Annotated[bool, typer.Option(help="Exit 0 when the topic holds no version of --name")] = False,
) -> None:
    """Fetch, verify and place a checkpoint; print its folder. For a worker's or trainer's init container:

    streamrec checkpoints fetch --name multvae --to /models && streamrec worker --model /models/multvae
    """
    from stream_worker.channel.checkpoint_topic import fetch_checkpoint, newest_uri
    from stream_worker.cli.common import cli_settings, console, fail

    settings = cli_settings()
    if (name is None) == (uri is None):
        fail("give exactly one of --name NAME (the newest version) or --uri kafka://...", 2)
    if uri is None:
        uri = _or_fail(lambda: newest_uri(settings, str(name)))
        if uri is None:
            message = f"the topic {settings.checkpoints_topic} holds no checkpoint of {name!r} yet"
            if missing_ok:
                console.print(message)
                return
            fail(f"{message}; publish one with `streamrec checkpoints publish FOLDER`", 1)
    folder = _or_fail(
        lambda: fetch_checkpoint(
            settings, uri, to, expected_weights_sha256=sha256, timeout_s=settings.checkpoint_fetch_timeout_s
        )
    )
    typer.echo(folder)


@checkpoints_app.command("list")
def list_checkpoints() -> None:
    """Every checkpoint on the topic: URI, weights size and SHA-256."""
    from stream_worker.channel.checkpoint_topic import checkpoint_uri, read_manifests
    from stream_worker.cli.common import cli_settings

    settings = cli_settings()
    manifests = _or_fail(lambda: read_manifests(settings))
    for manifest in sorted(manifests.values(), key=lambda m: (m["name"], m["version"])):
        weights = manifest["files"]["weights"]
        uri = checkpoint_uri(settings.checkpoints_topic, manifest["name"], manifest["version"])
        typer.echo(f"{uri}  {weights['size'] / 1e6:.1f} MB  sha256 {weights['sha256']}")


def _or_fail(action: Callable[[], T]) -> T:
    """The result of `action`, or one sentence and exit 1 when Kafka or the checkpoint says no."""
    from confluent_kafka import KafkaException

    from models.checkpoint import CheckpointError
    from stream_worker.channel.checkpoint_topic import CheckpointTransferError
    from stream_worker.cli.common import fail

    try:
        return action()
    except (CheckpointTransferError, CheckpointError, KafkaException, OSError) as exc:
        fail(str(exc), 1)
