"""Which version of a model directory serves: serving.json, resolve/load, rollback target."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp

from models import checkpoint
from models.checkpoint import CheckpointError
from models.train import train_model


def save_versions(model_dir, n: int) -> None:
    X = sp.csr_matrix(np.eye(4, dtype=np.float32))
    model, _ = train_model("pop", X, device="cpu")
    for _ in range(n):
        checkpoint.save(model, model_dir, item_ids=list("abcd"))


def test_without_a_record_the_newest_folder_serves(tmp_path):
    save_versions(tmp_path, 3)
    assert checkpoint.serving_version(tmp_path) is None
    assert checkpoint.resolve(tmp_path).name == "v000003"


def test_the_recorded_version_serves_not_the_newest_and_history_is_kept(tmp_path):
    save_versions(tmp_path, 3)
    checkpoint.record_serving(tmp_path, 1, action="promote", reason="first")
    checkpoint.record_serving(tmp_path, 2, action="promote", reason="better")
    # v3 exists but was never promoted (a rejected candidate): a starting worker must not load it.
    assert checkpoint.resolve(tmp_path).name == "v000002"
    assert checkpoint.load(tmp_path).metadata.version == 2
    record = json.loads((tmp_path / checkpoint.SERVING_FILE).read_text())
    assert [(e["version"], e["action"], e["reason"]) for e in record["history"]] == [
        (1, "promote", "first"),
        (2, "promote", "better"),
    ]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != checkpoint.LOCK_FILE]
    assert not leftovers, "no staging file left behind"


def test_rollback_goes_to_the_newest_older_version_that_served(tmp_path):
    save_versions(tmp_path, 4)
    with pytest.raises(CheckpointError, match="nothing was promoted"):
        checkpoint.rollback_target(tmp_path)
    for version in (1, 2, 4):  # v3 was rejected
        checkpoint.record_serving(tmp_path, version, action="promote", reason="")
    assert checkpoint.rollback_target(tmp_path) == 2
    checkpoint.record_serving(tmp_path, 2, action="rollback", reason="")
    assert checkpoint.rollback_target(tmp_path) == 1
    checkpoint.record_serving(tmp_path, 1, action="rollback", reason="")
    with pytest.raises(CheckpointError, match="oldest version"):
        checkpoint.rollback_target(tmp_path)


def test_a_record_naming_a_missing_version_is_a_clear_error(tmp_path):
    save_versions(tmp_path, 1)
    checkpoint.record_serving(tmp_path, 7, action="promote", reason="")
    with pytest.raises(CheckpointError, match="v000007, which is missing"):
        checkpoint.resolve(tmp_path)


def test_pruning_keeps_the_newest_the_serving_and_the_rollback_targets(tmp_path):
    save_versions(tmp_path, 9)
    for version in (2, 3, 5):  # promoted; the rest were rejected candidates
        checkpoint.record_serving(tmp_path, version, action="promote", reason="")
    checkpoint.record_serving(tmp_path, 3, action="rollback", reason="")  # v3 serves, v5 is newer

    assert checkpoint.prune(tmp_path, keep=2) == [1, 2, 4, 6, 7]
    assert checkpoint.versions(tmp_path) == [3, 5, 8, 9]  # serving, newest 2 that served, newest 2
    assert checkpoint.resolve(tmp_path).name == "v000003"
    assert not [p for p in tmp_path.glob(".deleting-*")], "no half-deleted folder left behind"
    assert checkpoint.next_version(tmp_path) == 10, "a deleted number is never given out again"
    assert checkpoint.prune(tmp_path, keep=2) == []


def test_pruning_a_directory_without_a_serving_record_keeps_the_newest(tmp_path):
    save_versions(tmp_path, 3)
    (tmp_path / ".deleting-v000000").mkdir()  # left behind by a trainer killed while deleting
    assert checkpoint.prune(tmp_path, keep=1) == [1, 2]
    assert checkpoint.resolve(tmp_path).name == "v000003"
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.LOCK_FILE, "v000003"]


def test_changes_to_the_serving_record_made_at_once_are_all_kept(tmp_path):
    # The trainer promoting while an operator runs `streamrec models promote`: neither entry is lost.
    save_versions(tmp_path, 2)

    def record(version: int) -> None:
        for _ in range(50):
            checkpoint.record_serving(tmp_path, version, action="promote", reason="")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(record, [1, 2, 1, 2]))
    history = json.loads((tmp_path / checkpoint.SERVING_FILE).read_text())["history"]
    assert len(history) == 200


def test_concurrent_saves_each_get_their_own_version(tmp_path):
    """The next version is picked under the same lock as the write: 16 saves at once from 8
    threads (the trainer and `streamrec train` into one directory) give 16 versions, none lost."""
    from models.baselines import Popularity

    def save(n: int) -> int:
        path = checkpoint.save(Popularity(3), tmp_path, item_ids=["a", "b", "c"], name=f"m{n}")
        return checkpoint.read_metadata(path).version

    with ThreadPoolExecutor(8) as pool:
        saved = list(pool.map(save, range(16)))
    assert sorted(saved) == list(range(1, 17)) and checkpoint.versions(tmp_path) == list(range(1, 17))
