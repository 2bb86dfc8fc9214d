"""Checkpoints: safetensors weights + JSON metadata, one folder per version.

    <model_dir>/
      v000001/
        weights.safetensors   every tensor of the model (`Recommender.tensors()`)
        metadata.json         kind, hyperparameters, item vocabulary, version, metrics, training window,
                              and the promotion decision taken when it was trained
      serving.json            which version serves, and the history of promotions and rollbacks
      .lock                   held while serving.json is changed or old versions are deleted

Loading reads tensors with safetensors and everything else from JSON: nothing is ever
unpickled, so a checkpoint from an untrusted place cannot run code. A version folder is
written under a temporary name and renamed into place, so a reader never sees half of one.

A model directory with a `serving.json` serves the version it names: `resolve` and `load` of
the directory pick it, not the newest folder (a rejected candidate is stored but never served).
Directories without one (older ones, or `streamrec train --ratings` output) serve their newest
version.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file

from models.base import REGISTRY, Recommender

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"
SERVING_FILE = "serving.json"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1
_VERSION_DIR = re.compile(r"^v(\d{6,})$")


@dataclass
class CheckpointMetadata:
    kind: str
    version: int
    item_ids: list[str]
    hyperparameters: dict[str, Any]
    name: str = "streamrec"
    created_at_ms: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # Where the training data came from: {"source": "ratings:u.data" | "topic:user-events",
    # "events": n, "users": n, "window_start_ms": t0, "window_end_ms": t1, ...}
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # Why this version was or was not promoted when it was trained: {"promoted": bool, "reason": str,
    # "metric": "ndcg@20", "candidate": x, "serving": y, "serving_version": n, "cutoff_ms": t, ...}.
    promotion: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    model: Recommender
    metadata: CheckpointMetadata
    path: Path


class CheckpointError(Exception):
    """A checkpoint folder is missing, incomplete or inconsistent."""

    exit_code = 2  # the command line exits with it: a usage error


def version_dir(model_dir: Path, version: int) -> Path:
    return Path(model_dir) / f"v{version:06d}"


def versions(model_dir: Path) -> list[int]:
    """Versions present under `model_dir`, oldest first (complete ones only)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    found = []
    for child in model_dir.iterdir():
        match = _VERSION_DIR.match(child.name)
        if match and (child / METADATA_FILE).is_file() and (child / WEIGHTS_FILE).is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def next_version(model_dir: Path) -> int:
    existing = versions(model_dir)
    return existing[-1] + 1 if existing else 1


def resolve(path: Path) -> Path:
    """A checkpoint folder itself, or the serving version of a model directory (its newest
    version when the directory has no serving record)."""
    path = Path(path)
    if (path / METADATA_FILE).is_file():
        return path
    serving = serving_version(path)
    if serving is not None:
        if serving not in versions(path):
            raise CheckpointError(
                f"{path / SERVING_FILE} names v{serving:06d}, which is missing or incomplete; "
                "choose another with `streamrec models promote VERSION`"
            )
        return version_dir(path, serving)
    existing = versions(path)
    if not existing:
        raise CheckpointError(
            f"{path} holds no checkpoint: expected {METADATA_FILE} there or v000001/... folders inside; "
            "train one with `streamrec train --ratings FILE --out DIR`"
        )
    return version_dir(path, existing[-1])


def save(
    model: Recommender,
    model_dir: Path,
    *,
    item_ids: list[str],
    version: int | None = None,
    name: str = "streamrec",
    metrics: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
    promotion: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as version `version` (default: the next free one) under `model_dir`."""
    assert len(item_ids) == model.n_items, (
        f"item vocabulary has {len(item_ids)} ids but the model scores {model.n_items} items"
    )
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=model_dir))
    try:
        # safetensors wants contiguous CPU tensors that share no memory.
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.tensors().items()}
        save_file(tensors, str(staging / WEIGHTS_FILE))
        # The version is picked under the same lock as the rename that makes it exist: two saves
        # at once (the trainer and `streamrec train`) would otherwise pick the same number.
        with _locked(model_dir):
            version = next_version(model_dir) if version is None else version
            target = version_dir(model_dir, version)
            if target.exists():
                raise CheckpointError(f"{target} already exists; versions are never overwritten")
            metadata = CheckpointMetadata(
                kind=model.kind,
                version=version,
                item_ids=list(item_ids),
                hyperparameters=model.hyperparameters(),
                name=name,
                created_at_ms=int(time.time() * 1000),
                metrics=dict(metrics or {}),
                training=dict(training or {}),
                promotion=dict(promotion or {}),
            )
            (staging / METADATA_FILE).write_text(json.dumps(metadata.__dict__, indent=1))
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def weights_sha256(folder: Path) -> str:
    """Lowercase hex SHA-256 of a checkpoint's weights file (what announcements carry)."""
    digest = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_FILE, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(folder: Path) -> CheckpointMetadata:
    """The metadata of one checkpoint folder, without loading its weights."""
    try:
        return CheckpointMetadata(**json.loads((Path(folder) / METADATA_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{Path(folder) / METADATA_FILE} is not valid checkpoint metadata: {exc}") from exc


def load(path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a checkpoint folder (or the newest one in a model directory) onto `device`."""
    folder = resolve(Path(path))
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    except Exception as exc:  # safetensors' errors name neither the file nor what to do
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE} cannot be read ({exc}); it is truncated or not a safetensors file — "
            "train the model again or point at another version"
        ) from exc
    return build(read_metadata(folder), tensors, folder, device)


def load_bytes(folder: Path, metadata: CheckpointMetadata, weights: bytes, device: torch.device | str) -> LoadedModel:
    """A checkpoint from weights already read into memory (after their hash was checked)."""
    return build(metadata, safetensors_load(weights), Path(folder), device)


def build(
    metadata: CheckpointMetadata, tensors: dict[str, torch.Tensor], folder: Path, device: torch.device | str
) -> LoadedModel:
    """The model `metadata` describes, holding `tensors`, on `device`."""
    if metadata.kind not in REGISTRY:
        raise CheckpointError(
            f"{folder} holds a model of kind {metadata.kind!r}, which this build does not know "
            f"(known: {', '.join(sorted(REGISTRY))})"
        )
    cls = REGISTRY[metadata.kind]
    config = cls.Config(**metadata.hyperparameters)
    model = cls(len(metadata.item_ids), config)
    model.load_tensors(tensors)
    model.to(device)
    return LoadedModel(model=model, metadata=metadata, path=folder)


# --- which version serves ------------------------------------------------------------------


def serving_record(model_dir: Path) -> dict[str, Any] | None:
    """The parsed `serving.json` ({"serving": n, "history": [...]}), or None if there is none."""
    file = Path(model_dir) / SERVING_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
        int(record["serving"])
        return record
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{file} is not a valid serving record: {exc}") from exc


def serving_version(model_dir: Path) -> int | None:
    """The version `serving.json` names, or None when the directory has no serving record."""
    record = serving_record(model_dir)
    return None if record is None else int(record["serving"])


@contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    """Hold the model directory's lock: the trainer and `streamrec models` both read, change and
    write `serving.json` (and the trainer deletes versions), and two at once would lose an entry."""
    with open(Path(model_dir) / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def record_serving(model_dir: Path, version: int, *, action: str, reason: str) -> None:
    """Make `version` the serving one and append the change to the history (atomic replace)."""
    assert action in ("promote", "rollback"), f"unknown action {action!r}"
    model_dir = Path(model_dir)
    with _locked(model_dir):
        _record_serving(model_dir, version, action=action, reason=reason)


def _record_serving(model_dir: Path, version: int, *, action: str, reason: str) -> None:
    try:
        record = serving_record(model_dir) or {"serving": version, "history": []}
    except CheckpointError:  # a damaged record is replaced, not appended to
        record = {"serving": version, "history": []}
    entry = {"version": version, "action": action, "reason": reason, "at_ms": int(time.time() * 1000)}
    record = {"serving": version, "history": [*record["history"], entry]}
    fd, staging = tempfile.mkstemp(prefix=f".{SERVING_FILE}.", dir=model_dir)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(record, out, indent=1)
        os.replace(staging, model_dir / SERVING_FILE)  # readers see the old or the new file, never half
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def prune(model_dir: Path, keep: int) -> list[int]:
    """Delete old versions; returns the deleted ones. Kept: the newest `keep` versions, the
    serving one, and the newest `keep` that have served (what `models rollback` goes back to).

    Each doomed folder is first renamed to a hidden name, so `versions()` and a loading worker
    see it whole or not at all. The newest version is always kept: numbers are never reused.
    """
    assert keep >= 1, "keep at least the newest version"
    with _locked(model_dir):
        return _prune(Path(model_dir), keep)


def _prune(model_dir: Path, keep: int) -> list[int]:
    present = versions(model_dir)
    record = serving_record(model_dir) or {"serving": None, "history": []}
    served = sorted({int(entry["version"]) for entry in record["history"]} & set(present))
    kept = set(present[-keep:]) | set(served[-keep:]) | {record["serving"]}
    doomed = [v for v in present if v not in kept]
    for leftover in model_dir.glob(".deleting-v*"):  # a deletion a crash interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    for version in doomed:
        folder = version_dir(model_dir, version)
        hidden = model_dir / f".deleting-{folder.name}"
        os.rename(folder, hidden)
        shutil.rmtree(hidden)
    return doomed


def rollback_target(model_dir: Path) -> int:
    """The newest version older than the serving one that has served before (CheckpointError if none)."""
    record = serving_record(model_dir)
    if record is None:
        raise CheckpointError(f"{model_dir} has no {SERVING_FILE}: nothing was promoted there, so nothing to roll back")
    current = int(record["serving"])
    served_before = {int(entry["version"]) for entry in record["history"]} & set(versions(model_dir))
    older = sorted(v for v in served_before if v < current)
    if not older:
        raise CheckpointError(
            f"v{current:06d} is the oldest version that has served in {model_dir}; nothing to roll back to"
        )
    return older[-1]
