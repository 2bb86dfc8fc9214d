"""What a worker checks before it believes an announced checkpoint.

Anyone who can write to the model-updates topic can announce, so an announcement is only a hint:
the watcher accepts it only when (`verify`)

  * the checkpoint resolves, after following links, inside the worker's model directory;
  * its two files are regular files, the weights no larger than `model_max_bytes`;
  * metadata.json agrees with the announcement (name, kind, version);
  * the weights' SHA-256 equals the announced `weights_sha256`;
  * the version is newer than the newest known for that name and not absurdly so (a rollback
    announcement may go back to an older version);
  * the model knows enough of the items the stream has shown (`model_min_item_overlap`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from models import checkpoint
from models.checkpoint import CheckpointError, LoadedModel
from stream_worker.channel.checkpoint_topic import (
    SCHEME,
    CheckpointIntegrityError,
    CheckpointTransferError,
    local_checkpoint,
    parse_uri,
)
from stream_worker.config import Settings

METADATA_MAX_BYTES = 256 * 1024**2  # an item vocabulary of millions of ids still fits


MIN_ITEMS_FOR_OVERLAP = 100  # below this many seen items the overlap says nothing yet


class Rejected(Exception):
    """An announcement the worker will not serve; `reason` is a label of model_updates_rejected_total."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    root: Path  # checkpoints must resolve inside this folder
    max_weights_bytes: int
    min_item_overlap: float
    max_version_jump: int


def checkpoint_root(model_dir: Path) -> Path:
    """The folder announced checkpoints must live in: the model directory, or the parent of a
    single checkpoint folder given as --model."""
    model_dir = Path(model_dir)
    return (model_dir.parent if (model_dir / checkpoint.METADATA_FILE).is_file() else model_dir).resolve()


def checkpoint_path(uri: str) -> Path:
    """A plain path or a file:// URI as a path; other schemes are rejected."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise Rejected("location", f"file URI {uri!r} names another host")
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # (a one-letter scheme is a Windows drive)
        raise Rejected("location", f"checkpoint URI scheme {parsed.scheme!r} is not supported (a path or file://)")
    return Path(uri)


def verify(
    update: dict[str, Any],
    limits: Limits,
    newest: dict[str, int],
    serving: tuple[str, int],
    seen_items: list[str],
    device: Any,
) -> LoadedModel:
    """The announced checkpoint, loaded, if it passes every check in the module docstring; else Rejected.

    `newest`: the newest version known per model name; `serving`: (name, version) served now."""
    name, version = update["model_name"], update["version"]
    if update.get("action") == "rollback":
        if (name, version) == serving:
            raise Rejected("version", f"rollback to {name} v{version}, which is already serving")
    else:
        known = newest.get(name, 0)
        if version <= known:
            raise Rejected("version", f"{name} v{version} is not newer than v{known}")
        ceiling = max(newest.values(), default=0) + limits.max_version_jump
        if version > ceiling:
            raise Rejected("version", f"{name} v{version} jumps beyond v{ceiling} (model_max_version_jump)")

    folder = Path(os.path.realpath(checkpoint_path(update["checkpoint_uri"])))
    if not folder.is_relative_to(limits.root):
        raise Rejected("location", f"checkpoint {folder} is outside the model directory {limits.root}")
    weights_file = _regular_file(folder / checkpoint.WEIGHTS_FILE, limits.root, limits.max_weights_bytes)
    metadata_file = _regular_file(folder / checkpoint.METADATA_FILE, limits.root, METADATA_MAX_BYTES)

    try:
        metadata = checkpoint.read_metadata(metadata_file.parent)
    except CheckpointError as exc:
        raise Rejected("metadata", str(exc)) from None
    claimed = (update["model_name"], update["model_kind"], update["version"])
    if (metadata.name, metadata.kind, metadata.version) != claimed:
        raise Rejected(
            "metadata",
            f"{metadata_file} says {metadata.name}/{metadata.kind} v{metadata.version}, "
            f"the announcement {claimed[0]}/{claimed[1]} v{claimed[2]}",
        )

    expected = update.get("weights_sha256")
    if not expected:
        raise Rejected("hash", "the announcement carries no weights_sha256")
    weights = weights_file.read_bytes()
    actual = hashlib.sha256(weights).hexdigest()
    if actual != expected.lower():
        raise Rejected("hash", f"{weights_file} has SHA-256 {actual}, the announcement {expected}")

    if len(seen_items) >= MIN_ITEMS_FOR_OVERLAP:
        vocabulary = set(metadata.item_ids)
        overlap = sum(item in vocabulary for item in seen_items) / len(seen_items)
        if overlap < limits.min_item_overlap:
            raise Rejected(
                "vocabulary",
                f"{name} v{version} knows {overlap:.0%} of the {len(seen_items)} items seen in the stream "
                f"(model_min_item_overlap is {limits.min_item_overlap:.0%})",
            )
    try:
        return checkpoint.load_bytes(folder, metadata, weights, device)
    except Exception as exc:  # safetensors or a shape mismatch: the file is not what it claims
        raise Rejected("load", f"{weights_file} does not load: {type(exc).__name__}: {exc}") from None


def fetched_from_kafka(
    settings: Settings, update: dict[str, Any], limits: Limits, newest: dict[str, int]
) -> tuple[dict[str, Any], Limits]:
    """Checkpoints through Kafka (channel/checkpoint_topic.py): a kafka:// checkpoint is
    fetched into the local cache with its sizes and hashes checked against the manifest and the
    announcement; `verify` then checks it like any folder, the cache being where it must resolve.
    Other URIs pass unchanged, and so do announcements `verify` refuses for their version alone
    (nothing is downloaded for them)."""
    stale = update.get("action") != "rollback" and update["version"] <= newest.get(update["model_name"], 0)
    if not update["checkpoint_uri"].startswith(SCHEME) or stale:
        return update, limits
    try:
        parse_uri(settings, update["checkpoint_uri"])  # only on this deployment's checkpoints topic
    except CheckpointTransferError as exc:
        raise Rejected("location", str(exc)) from None
    try:
        folder = local_checkpoint(
            settings, update["checkpoint_uri"], expected_weights_sha256=update.get("weights_sha256")
        )
    except CheckpointIntegrityError as exc:
        raise Rejected("hash", str(exc)) from None
    except CheckpointTransferError as exc:
        raise Rejected("file", str(exc)) from None
    return {**update, "checkpoint_uri": str(folder)}, replace(limits, root=folder.parent.resolve())


def _regular_file(path: Path, root: Path, max_bytes: int) -> Path:
    """`path` after following links, if it is a regular file inside `root` of at most `max_bytes`."""
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root):
        raise Rejected("location", f"{path} links outside the model directory {root}")
    try:
        info = os.stat(real)
    except OSError as exc:
        raise Rejected("file", f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise Rejected("file", f"{path} is not a regular file")
    if info.st_size > max_bytes:
        raise Rejected("file", f"{path} has {info.st_size} bytes, more than the limit of {max_bytes}")
    return real
