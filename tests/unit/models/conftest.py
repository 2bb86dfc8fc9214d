"""Shared fixtures: a synthetic dataset with planted structure, and the MovieLens folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import models  # noqa: F401  (registers every model kind)
from models.data import default_data_dir


def planted_matrix(
    n_users: int = 240, n_groups: int = 4, items_per_group: int = 25, per_user: int = 12, seed: int = 0
) -> sp.csr_matrix:
    """Users in `n_groups` taste groups; 90% of a user's items come from the group's items.

    Every group's items are equally popular overall, so popularity ranks them all alike and
    only a model that reads the user's history can tell which group's items to recommend.
    """
    rng = np.random.default_rng(seed)
    n_items = n_groups * items_per_group
    rows, cols = [], []
    for u in range(n_users):
        group = u % n_groups
        own = rng.choice(items_per_group, size=int(per_user * 0.9), replace=False) + group * items_per_group
        other = rng.choice(n_items, size=per_user - len(own), replace=False)
        items = np.unique(np.concatenate([own, other]))
        rows += [u] * len(items)
        cols += items.tolist()
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))


@pytest.fixture(scope="session")
def planted() -> sp.csr_matrix:
    return planted_matrix()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared MovieLens folder (`$STREAMREC_DATA_DIR` or ../shared/data); skip when absent."""
    path = default_data_dir()
    if not (path / "ml-100k" / "u.data").is_file():
        where = "STREAMREC_DATA_DIR" if os.environ.get("STREAMREC_DATA_DIR") else "../shared/data"
        pytest.skip(f"MovieLens files not found in {path} ({where}); these tests need the shared data folder")
    return path


@pytest.fixture(scope="session")
def planted_udata(planted, tmp_path_factory) -> Path:
    """The planted matrix written as an ML-100K u.data file (1-based ids, rating 5)."""
    coo = planted.tocoo()
    path = tmp_path_factory.mktemp("planted") / "u.data"
    rows = zip(coo.row.tolist(), coo.col.tolist(), strict=True)
    path.write_text("".join(f"{u + 1}\t{i + 1}\t5\t{1000 + n}\n" for n, (u, i) in enumerate(rows)))
    return path
