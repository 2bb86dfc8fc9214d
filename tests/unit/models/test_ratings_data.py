"""Reading MovieLens files: three formats, chunked reading, the shared split folders."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import iter_rating_rows, load_cfgan_split, load_chrono_loo, load_ratings

ROWS = [(10, 7, 4.0, 100), (10, 3, 2.0, 101), (2, 7, 5.0, 102), (30, 99, 3.5, 103)]


def _write(path, fmt: str, rows=ROWS) -> None:
    if fmt == "u.data":
        text = "".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in rows)
    elif fmt == "ratings.dat":
        text = "".join(f"{u}::{i}::{int(r)}::{t}\n" for u, i, r, t in rows)
    else:
        text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
    path.write_text(text)


@pytest.mark.parametrize("fmt", ["u.data", "ratings.dat", "ratings.csv"])
def test_three_formats_give_the_same_interactions(tmp_path, fmt):
    _write(tmp_path / fmt, fmt)
    data = load_ratings(tmp_path / fmt)
    assert data.user_ids == ["2", "10", "30"]  # ascending numeric order of the file's ids
    assert data.item_ids == ["3", "7", "99"]
    assert data.matrix.toarray().tolist() == [[0, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert data.timestamps is not None and data.timestamps[1, 0] == 101


def test_min_rating_keeps_positives_only(tmp_path):
    _write(tmp_path / "ratings.csv", "ratings.csv")
    data = load_ratings(tmp_path / "ratings.csv", min_rating=4)
    assert data.user_ids == ["2", "10"] and data.item_ids == ["7"]
    assert data.matrix.nnz == 2


def test_chunked_reading_matches_one_read_and_handles_a_missing_last_newline(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(int(u), int(i), 4.0, 1000 + n) for n, (u, i) in enumerate(rng.integers(1, 50, size=(500, 2)))]
    path = tmp_path / "ratings.dat"
    _write(path, "ratings.dat", rows)
    path.write_text(path.read_text().rstrip("\n"))
    whole = np.concatenate(list(iter_rating_rows(path, 4)))
    chunked = np.concatenate(list(iter_rating_rows(path, 4, chunk_bytes=37)))
    assert whole.shape == (500, 4) and np.array_equal(whole, chunked)


def test_repeated_pair_keeps_its_last_timestamp(tmp_path):
    _write(tmp_path / "u.data", "u.data", [(1, 1, 5, 10), (1, 1, 5, 20)])
    data = load_ratings(tmp_path / "u.data")
    assert data.matrix.nnz == 1 and data.matrix[0, 0] == 1.0 and data.timestamps[0, 0] == 20


def test_unknown_format_is_a_clear_error(tmp_path):
    (tmp_path / "x.txt").write_text("1;2;3;4\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_ratings(tmp_path / "x.txt")


@pytest.mark.data
def test_shared_ml100k_counts_match_the_data_readme(data_dir):
    data = load_ratings(data_dir / "ml-100k" / "u.data")
    assert data.matrix.shape == (943, 1682) and data.matrix.nnz == 100_000
    positives = load_ratings(data_dir / "ml-100k" / "u.data", min_rating=4)
    assert positives.matrix.nnz == 55_375 and positives.matrix.shape[0] == 942


@pytest.mark.data
def test_shared_split_folders_load_with_the_documented_counts(data_dir):
    cfgan = load_cfgan_split(data_dir / "ml-100k-cfgan-split")
    assert cfgan.train.shape == (943, 1653) and cfgan.train.nnz == 80_000 and cfgan.test.nnz == 19_963
    assert cfgan.train.multiply(cfgan.test).nnz == 0, "test ratings must not be in training"
    chrono = load_chrono_loo(data_dir / "ml-100k-chrono-loo")
    assert chrono.train.shape == (943, 1349) and chrono.train.nnz == 97_401
    assert chrono.validation.nnz == chrono.test.nnz == 943
    assert chrono.train.multiply(chrono.test).nnz == 0 and chrono.train.multiply(chrono.validation).nnz == 0
