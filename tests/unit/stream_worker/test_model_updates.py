"""Announcement verification: only a checkpoint inside the model directory, of regular files,
whose metadata and weights match the announcement, newer (or a rollback), is loaded."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from models import checkpoint
from models.base import REGISTRY
from stream_worker.channel.verify import Limits, Rejected, verify

ITEMS = [f"i{n}" for n in range(40)]


def save(model_dir: Path, version: int | None = None, items: list[str] = ITEMS) -> Path:
    model = REGISTRY["multvae"](len(items), REGISTRY["multvae"].Config())
    return checkpoint.save(model, model_dir, item_ids=items, name="multvae", version=version)


def announcement(folder: Path, **change) -> dict:
    meta = checkpoint.read_metadata(folder)
    update = {
        "model_name": meta.name,
        "model_kind": meta.kind,
        "version": meta.version,
        "checkpoint_uri": str(folder),
        "action": None,
        **change,
    }
    if "weights_sha256" not in update:
        update["weights_sha256"] = checkpoint.weights_sha256(folder)
    return update


@pytest.fixture
def store(tmp_path):
    model_dir = tmp_path / "models"
    save(model_dir)  # v1 serves
    limits = Limits(root=model_dir.resolve(), max_weights_bytes=10**9, min_item_overlap=0.5, max_version_jump=1000)
    return model_dir, limits


def check(update, limits, *, newest=None, seen=()):
    return verify(update, limits, newest or {"multvae": 1}, ("multvae", 1), list(seen), "cpu")


def test_a_genuine_announcement_loads_also_as_a_file_uri(store):
    model_dir, limits = store
    v2 = save(model_dir)
    assert check(announcement(v2), limits).metadata.version == 2
    assert check(announcement(v2, checkpoint_uri=v2.resolve().as_uri()), limits).metadata.version == 2


def test_a_checkpoint_outside_the_model_directory_is_rejected_even_through_dot_dot_or_a_link(store, tmp_path):
    model_dir, limits = store
    evil = save(tmp_path / "evil", version=2)
    for uri in (str(evil), f"{model_dir}/../evil/v000002"):
        with pytest.raises(Rejected) as rejected:
            check(announcement(evil, checkpoint_uri=uri), limits)
        assert rejected.value.reason == "location"
    (model_dir / "v000002").symlink_to(evil)
    with pytest.raises(Rejected, match="outside"):
        check(announcement(evil, checkpoint_uri=str(model_dir / "v000002")), limits)


def test_a_fifo_for_weights_is_rejected_without_blocking(store):
    model_dir, limits = store
    v2 = save(model_dir)
    sha = checkpoint.weights_sha256(v2)
    (v2 / checkpoint.WEIGHTS_FILE).unlink()
    os.mkfifo(v2 / checkpoint.WEIGHTS_FILE)
    outcome: list[BaseException] = []
    thread = threading.Thread(
        target=lambda: outcome.append(_raises(check, announcement(v2, weights_sha256=sha), limits))
    )
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "verification blocked on a FIFO"
    assert isinstance(outcome[0], Rejected) and outcome[0].reason == "file"


def _raises(fn, *args) -> BaseException | None:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    return None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"weights_sha256": "0" * 64}, "hash"),
        ({"weights_sha256": None}, "hash"),
        ({"model_kind": "cfgan"}, "metadata"),
        ({"model_name": "other"}, "metadata"),
        ({"checkpoint_uri": "s3://bucket/v000002"}, "location"),
    ],
)
def test_an_announcement_that_does_not_match_its_checkpoint_is_rejected(store, change, reason):
    model_dir, limits = store
    v2 = save(model_dir)
    with pytest.raises(Rejected) as rejected:
        check(announcement(v2, **change), limits)
    assert rejected.value.reason == reason


def test_old_versions_absurd_jumps_and_rollbacks(store):
    model_dir, limits = store
    v2, v3 = save(model_dir), save(model_dir)
    with pytest.raises(Rejected, match="not newer"):
        check(announcement(v2), limits, newest={"multvae": 3})
    big = save(model_dir, version=10**15)
    with pytest.raises(Rejected, match="jumps beyond"):
        check(announcement(big), limits)
    # A rollback may go back, to anything but what already serves.
    assert check(announcement(v2, action="rollback"), limits, newest={"multvae": 3}).metadata.version == 2
    with pytest.raises(Rejected, match="already serving"):
        check(announcement(model_dir / "v000001", action="rollback"), limits)
    assert v3.is_dir()


def test_a_model_that_knows_too_few_of_the_items_seen_is_rejected(store):
    model_dir, limits = store
    strangers = save(model_dir, items=[f"other{n}" for n in range(40)])
    with pytest.raises(Rejected) as rejected:
        check(announcement(strangers), limits, seen=ITEMS * 3)
    assert rejected.value.reason == "vocabulary"
    assert check(announcement(strangers), limits, seen=ITEMS[:10]).metadata.version == 2  # too few seen to judge


def test_a_load_that_hangs_is_abandoned_after_the_timeout_and_counted(store, monkeypatch):
    from prometheus_client import CollectorRegistry

    from stream_worker.channel import watcher as model_updates
    from stream_worker.codec import MODEL_UPDATE, make_codec
    from stream_worker.config import load_settings
    from stream_worker.metrics import WorkerMetrics

    model_dir, _ = store
    v2 = save(model_dir)
    hang = threading.Event()
    monkeypatch.setattr(model_updates, "verify", lambda *args: hang.wait(60))  # a read that never returns
    settings = load_settings(model_dir=model_dir, model_load_timeout_s=1)
    metrics = WorkerMetrics(CollectorRegistry())
    serving = checkpoint.read_metadata(model_dir / "v000001")
    watcher = model_updates.ModelWatcher(
        settings, serving=serving, serving_path=model_dir, device="cpu", metrics=metrics
    )
    update = {**announcement(v2), "created_at": 0, "window_start": None, "window_end": None}
    value = make_codec(MODEL_UPDATE, "t", None).encode({**update, "events_trained": 0, "metrics": {}})
    watcher._consider(value)
    hang.set()
    assert metrics.model_updates_rejected.labels("timeout")._value.get() == 1
    assert watcher.take() is None
