"""The trainer side of the model channel: announce a saved checkpoint on model-updates.

With `STREAMREC_CHECKPOINT_STORE=kafka` the checkpoint's files are published first
(`checkpoint_topic.publish_checkpoint`) and the announcement names its kafka:// URI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from models import checkpoint
from models.checkpoint import CheckpointMetadata
from stream_worker.channel.checkpoint_topic import (
    publish_checkpoint,
)
from stream_worker.codec import MODEL_UPDATE, make_codec
from stream_worker.config import Settings


def announce(
    producer: Producer,
    settings: Settings,
    meta: CheckpointMetadata,
    path: Path,
    *,
    events_trained: int,
    window: tuple[int, int] | None,
    metrics: dict[str, float],
    action: str = "promote",
) -> None:
    """Publish a ModelUpdate for the checkpoint at `path` and wait for the broker's ack.

    `action` is "promote" (workers move up to this version) or "rollback" (workers move back
    to it, although it is older than what they serve)."""
    codec = make_codec(MODEL_UPDATE, settings.model_updates_topic, settings.schema_registry_url)
    uri = str(Path(path).resolve())
    if settings.checkpoint_store == "kafka":  # through Kafka: workers in any pod can fetch it
        uri = publish_checkpoint(settings, path)
    value = codec.encode(
        {
            "model_name": meta.name,
            "model_kind": meta.kind,
            "version": meta.version,
            "checkpoint_uri": uri,
            "created_at": meta.created_at_ms,
            "window_start": window[0] if window else None,
            "window_end": window[1] if window else None,
            "events_trained": events_trained,
            "metrics": metrics,
            "weights_sha256": checkpoint.weights_sha256(path),
            "action": action,
        }
    )
    errors: list[Any] = []
    producer.produce(
        settings.model_updates_topic, value, meta.name.encode(), on_delivery=lambda err, _m: errors.append(err)
    )
    producer.flush(30)
    if errors != [None]:
        raise RuntimeError(f"announcing model version {meta.version} failed: {errors or 'no acknowledgement'}")
