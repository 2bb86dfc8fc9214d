"""MovieLens files by path -> sparse user x item matrices.

Formats, told apart by the first line of the file:

    u.data       (ML-100K)          user<TAB>item<TAB>rating<TAB>timestamp, no header
    ratings.dat  (ML-1M, ML-10M)    user::item::rating::timestamp, no header
    ratings.csv  (ML-20M, ML-25M)   header userId,movieId,rating,timestamp

Files are parsed in byte chunks by NumPy's C parser (`np.fromstring`), never one Python
object per row: a 20M-row ratings.csv (ML-20M's size, 470 MB of text) loads in about 25 s
on one core with a peak of 1.7 GB resident (torch included): the ids, timestamps and
sorting that build the CSR matrix, plus one 64 MB chunk of text at a time.

Every model treats its input as implicit feedback, so matrices hold 1.0 per kept rating.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.sequences import Sequences

CHUNK_BYTES = 64 * 2**20


class RatingsFileError(ValueError):
    """A ratings file that cannot be read; the message names the file (and line) and the formats."""

    exit_code = 2  # the command line exits with it: a usage error


FORMATS = (
    "expected u.data (user<TAB>item<TAB>rating<TAB>timestamp), ratings.dat (user::item::rating::timestamp) "
    "or ratings.csv (header userId,movieId,rating,timestamp)"
)


@dataclass
class Interactions:
    """A user x item matrix and the ids it was built from (index order)."""

    user_ids: list[str]  # the file's user ids, as strings
    item_ids: list[str]  # the file's item ids, as strings; the checkpoint's vocabulary
    matrix: sp.csr_matrix  # (n_users, n_items) float32, 1.0 per positive
    # Same sparsity pattern as `matrix`, seconds since the epoch (int64), when the file has them.
    timestamps: sp.csr_matrix | None = None


@dataclass
class FixedSplit:
    """A split published by someone else, in the index space of its files."""

    train: sp.csr_matrix  # (n_users, n_items) positives the model may learn from
    test: sp.csr_matrix  # (n_users, n_items) held-out positives, disjoint from train
    validation: sp.csr_matrix | None = None  # when the split defines one


def _detect_format(path: Path) -> tuple[bytes, bool]:
    """(separator, has_header) from the first line of a MovieLens ratings file."""
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        raise RatingsFileError(f"{path} is empty (or starts with a blank line); {FORMATS}")
    for sep in (b"::", b"\t", b",", b" "):
        if sep in first:
            has_header = not first.split(sep)[0].strip().replace(b".", b"").isdigit()
            if has_header and not (sep == b"," and b"user" in first.lower()):  # ratings.csv's: userId,...
                break
            return sep, has_header
    raise RatingsFileError(f"{path}:1: cannot tell the format from the first line {first[:80]!r}; {FORMATS}")


def iter_rating_rows(path: Path, n_columns: int = 4, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """(rows, n_columns) float64 arrays, one per chunk of the file, in file order.

    For a ratings file the columns are user, item, rating, timestamp; a header line is skipped.
    Memory is bounded by `chunk_bytes` of text plus its parsed numbers.
    """
    sep, has_header = _detect_format(path)
    with open(path, "rb") as f:
        lines_before = 0  # lines of the file before `text`, for error messages
        if has_header:
            f.readline()
            lines_before = 1
        tail = b""
        while True:
            block = f.read(chunk_bytes)
            text = tail + block
            cut = text.rfind(b"\n") + 1 if block else len(text)  # the last line may lack a newline
            tail, text = text[cut:], text[:cut]
            if text.strip():
                # sep=" " makes NumPy split on any whitespace, so map the separator to a space.
                # At the first non-number it raises ValueError (NumPy >= 2.3) or stops with a
                # DeprecationWarning (older), made an error here.
                with warnings.catch_warnings():
                    warnings.simplefilter("error", DeprecationWarning)
                    try:
                        values = np.fromstring(text.replace(sep, b" "), dtype=np.float64, sep=" ")
                    except (ValueError, DeprecationWarning):
                        values = None
                lines = text.count(b"\n") + (not text.endswith(b"\n"))
                if values is None or values.size != lines * n_columns:
                    # Slow path, only for a chunk that did not parse cleanly (or has blank lines).
                    _check_lines(path, text, sep, n_columns, lines_before)
                    if values is None or values.size % n_columns:
                        raise RatingsFileError(f"{path}: a line does not have {n_columns} numeric fields; {FORMATS}")
                lines_before += text.count(b"\n")
                yield values.reshape(-1, n_columns)
            if not block:
                return


def _check_lines(path: Path, text: bytes, sep: bytes, n_columns: int, lines_before: int) -> None:
    """Raise RatingsFileError naming the file and line of the first line of `text` that is not
    blank and does not hold `n_columns` numbers separated by `sep`."""
    for number, line in enumerate(text.split(b"\n"), start=lines_before + 1):
        if not line.strip():
            continue
        fields = line.strip().split(sep)
        try:
            ok = len(fields) == n_columns and all(np.isfinite(float(x)) for x in fields)
        except ValueError:
            ok = False
        if not ok:
            raise RatingsFileError(
                f"{path}:{number}: expected {n_columns} numbers separated by {sep.decode()!r}, "
                f"got {line[:60].decode(errors='replace')!r}; {FORMATS}"
            )


def _to_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], timestamps=None):
    """Binary CSR (and a timestamp CSR with the same pattern); a repeated pair keeps its last row."""
    keys = rows.astype(np.int64) * shape[1] + cols
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    last = np.r_[keys[1:] != keys[:-1], True]  # the last of each run of equal (user, item) keys
    order, keys = order[last], keys[last]
    indptr = np.r_[0, np.cumsum(np.bincount(keys // shape[1], minlength=shape[0]))]
    indices = (keys % shape[1]).astype(np.int32)
    matrix = sp.csr_matrix((np.ones(len(keys), np.float32), indices, indptr), shape=shape)
    if timestamps is None:
        return matrix, None
    return matrix, sp.csr_matrix((timestamps[order], indices.copy(), indptr.copy()), shape=shape)


def load_ratings(path: Path, *, min_rating: float | None = None) -> Interactions:
    """Read u.data / ratings.dat / ratings.csv into an implicit-feedback `Interactions`.

    min_rating None keeps every rating as a positive (the CFGAN and Datasets-Dilemma view);
    min_rating=4 keeps ratings >= 4 (the Mult-VAE view). Users and items without a kept rating
    are dropped; ids are numbered in ascending numeric order of the file's ids.
    """
    path = Path(path)
    users, items, stamps = [], [], []
    for chunk in iter_rating_rows(path, n_columns=4):  # (rows, 4): user, item, rating, timestamp
        if min_rating is not None:
            chunk = chunk[chunk[:, 2] >= min_rating]
        users.append(chunk[:, 0].astype(np.int32))  # MovieLens ids fit in 32 bits
        items.append(chunk[:, 1].astype(np.int32))
        stamps.append(chunk[:, 3].astype(np.int64))
    if not users or sum(len(u) for u in users) == 0:
        raise RatingsFileError(f"{path} holds no rating >= {min_rating}" if min_rating else f"{path} holds no rating")
    user_raw, rows = np.unique(np.concatenate(users), return_inverse=True)
    del users  # the chunks; each step below frees its input before the next allocates
    item_raw, cols = np.unique(np.concatenate(items), return_inverse=True)
    del items
    matrix, timestamps = _to_csr(rows, cols, (len(user_raw), len(item_raw)), np.concatenate(stamps))
    return Interactions(
        user_ids=[str(u) for u in user_raw.tolist()],
        item_ids=[str(i) for i in item_raw.tolist()],
        matrix=matrix,
        timestamps=timestamps,
    )


def _index_pairs(path: Path, n_columns: int) -> np.ndarray:
    """(rows, 2) int64 (user index, item index) pairs from a small split file."""
    return np.concatenate(list(iter_rating_rows(path, n_columns)))[:, :2].astype(np.int64)


def load_cfgan_split(folder: Path) -> FixedSplit:
    """The CFGAN authors' ML-100K split: ML100K.train / ML100K.test, `user item rating`, 0-based.

    As in the authors' loader, every rating (1-5) is a positive.
    """
    folder = Path(folder)
    train = _index_pairs(folder / "ML100K.train", 3)
    test = _index_pairs(folder / "ML100K.test", 3)
    shape = (int(max(train[:, 0].max(), test[:, 0].max())) + 1, int(train[:, 1].max()) + 1)
    assert test[:, 1].max() < shape[1], "every test item must occur in training (true of the shipped split)"
    return FixedSplit(train=_to_csr(train[:, 0], train[:, 1], shape)[0], test=_to_csr(test[:, 0], test[:, 1], shape)[0])


def load_chrono_loo(folder: Path) -> FixedSplit:
    """Chin et al.'s chronological leave-one-out ML-100K split: train/validation/test.csv.

    Indices k refer to line k of users.txt / items.txt; every rating is a positive.
    """
    folder = Path(folder)
    shape = (
        len((folder / "users.txt").read_text().split()),
        len((folder / "items.txt").read_text().split()),
    )

    def read(name: str) -> sp.csr_matrix:
        pairs = _index_pairs(folder / name, 2)
        return _to_csr(pairs[:, 0], pairs[:, 1], shape)[0]

    return FixedSplit(train=read("train.csv"), validation=read("validation.csv"), test=read("test.csv"))


def default_data_dir() -> Path:
    """`$STREAMREC_DATA_DIR`, else the `shared/data` folder beside the repository."""
    env = os.environ.get("STREAMREC_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class InteractionLog:
    """Time-ordered histories read by `load_interactions`, with the file's ids (index order)."""

    user_ids: list[str]
    item_ids: list[str]
    sequences: Sequences  # user index -> item codes, oldest first (times when the file has them)


def load_interactions(path: Path) -> InteractionLog:
    """Read `user item [timestamp]` lines (whitespace- or comma-separated, numeric ids, an
    optional header line) into time-ordered sequences.

    With a timestamp column each user's events are sorted by it, stably (equal times keep
    line order); without one, line order is time order (as in SASRec's data files). Ids are
    numbered in ascending numeric order.
    """
    path = Path(path)
    with open(path, "rb") as f:
        text = f.read().replace(b",", b" ").replace(b"\t", b" ")
    first, _, rest = text.partition(b"\n")
    if first.split() and not first.split()[0].replace(b".", b"").replace(b"-", b"").isdigit():
        text = rest  # a header line
        first = rest.partition(b"\n")[0]
    n_columns = len(first.split())
    if n_columns == 0:
        raise RatingsFileError(f"{path}: no interactions (expected `user item [timestamp]` per line)")
    if n_columns not in (2, 3):
        raise RatingsFileError(f"{path}: expected `user item [timestamp]` per line, got {first[:80]!r}")
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError as exc:  # a field that is not a number
        raise RatingsFileError(f"{path}: every field must be a number ({exc}); ids are numeric here") from None
    if values.size % n_columns:
        raise RatingsFileError(f"{path}: a line does not have {n_columns} fields like the first ({first[:80]!r})")
    rows = values.reshape(-1, n_columns)
    user_raw, users = np.unique(rows[:, 0].astype(np.int64), return_inverse=True)
    item_raw, items = np.unique(rows[:, 1].astype(np.int64), return_inverse=True)
    times = rows[:, 2].astype(np.int64) if n_columns == 3 else None
    return InteractionLog(
        user_ids=[str(u) for u in user_raw.tolist()],
        item_ids=[str(i) for i in item_raw.tolist()],
        sequences=Sequences.from_pairs(users, items, len(user_raw), len(item_raw), times),
    )


def chrono_loo_sequences(folder: Path, udata: Path) -> Sequences:
    """The chrono-loo training interactions (train.csv) as time-ordered sequences, ordered by
    the ML-100K timestamps of u.data (equal times keep train.csv's line order)."""
    folder = Path(folder)
    user_ids = np.array((folder / "users.txt").read_text().split(), dtype=np.int64)
    item_ids = np.array((folder / "items.txt").read_text().split(), dtype=np.int64)
    pairs = _index_pairs(folder / "train.csv", 2)  # (n, 2) user index, item index
    raw = np.concatenate(list(iter_rating_rows(Path(udata), 4))).astype(np.int64)  # user, item, rating, time
    key = raw[:, 0] * 1_000_000 + raw[:, 1]
    order = np.argsort(key)
    wanted = user_ids[pairs[:, 0]] * 1_000_000 + item_ids[pairs[:, 1]]
    at = np.searchsorted(key[order], wanted)
    assert np.array_equal(key[order][np.minimum(at, len(key) - 1)], wanted), "a chrono-loo pair is not in u.data"
    times = raw[order[at], 3]
    return Sequences.from_pairs(pairs[:, 0], pairs[:, 1], len(user_ids), len(item_ids), times)
