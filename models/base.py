"""The one interface every recommender in `models/` implements.

A recommender is fitted on a user x item interaction matrix and then scores batches of
user histories over the whole catalog. Higher score = better. Nothing here knows about
Kafka: the offline evaluation hands `score` rows of a held-out matrix as a dense (B, n_items)
tensor; the stream worker calls `score_bag` with each user's rolling state as a short bag of
(item, weight) pairs, which models whose first layer is linear in the history compute
without building the (B, n_items) input (an embedding bag); the others get it densified.

Sequence models (`reads_order = True`: SASRec, HSTU) read histories in time order instead,
through `score_sequences` and `fit_sequences` on the view of `models.sequences` (codes oldest
first, batches left-padded with -1). Bag models get those calls too: the default turns the
sequence into a bag (weight 1 per interaction) and calls `score_bag` / `fit`.

Every model keeps its learned parameters as named tensors (`tensors()`) and its
hyperparameters as a dataclass (`config`), which is all `models.checkpoint` needs to save
and load it without pickle.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from models.sequences import Sequences


@dataclass
class FitReport:
    """What `fit` tells the caller: a training curve and the time it took."""

    seconds: float = 0.0
    # One entry per epoch (or per logged step), e.g. {"epoch": 3, "loss": 412.7, "val_ndcg@100": 0.41}.
    curve: list[dict[str, float]] = field(default_factory=list)


# Called once per epoch by models that train iteratively, with the model itself, so a caller can
# evaluate on validation data (early stopping, training curves). Returning False stops training.
EpochCallback = Callable[["Recommender", int], bool | None]


class Recommender(abc.ABC):
    """A model that maps user histories to scores over the catalog.

    Subclasses set `kind` (the name used in checkpoints and on the command line) and
    `Config` (a dataclass of hyperparameters with the paper's defaults).
    """

    kind: ClassVar[str]
    Config: ClassVar[type]
    # True for models that read the order of a history (fit with `fit_sequences`, score with
    # `score_sequences`); False for bag models, which see a history as item counts.
    reads_order: ClassVar[bool] = False

    def __init__(self, n_items: int, config: Any | None = None) -> None:
        assert n_items > 0, "a recommender needs a catalog of at least one item"
        self.n_items = n_items
        self.config = config if config is not None else self.Config()
        self.device = torch.device("cpu")

    @abc.abstractmethod
    def fit(
        self,
        X: sp.csr_matrix,
        *,
        seed: int = 0,
        on_epoch: EpochCallback | None = None,
    ) -> FitReport:
        """Learn from X, a (n_users, n_items) CSR matrix of non-negative interaction weights."""

    @abc.abstractmethod
    def score(self, X: torch.Tensor) -> torch.Tensor:
        """Scores (B, n_items) for histories X (B, n_items) on `self.device`; no gradients.

        Items in the history are NOT masked here: masking already-seen items is the caller's
        choice (the worker and the evaluation both do it).
        """

    def score_bag(self, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Scores (B, n_items) for histories given as bags: `index` (B, L) int64 item indices,
        -1 = an empty slot, `weights` (B, L) float32 (repeated items add up, as in the dense row).

        The same scores as `score(densify_bag(...))` up to float rounding. This default builds
        the dense input; models with a sparse first layer override it.
        """
        return self.score(densify_bag(index, weights, self.n_items))

    def score_sequences(self, codes: torch.Tensor, times_s: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, n_items) for histories as sequences: `codes` (B, L) int64 item codes,
        oldest first, LEFT-padded with -1 (newest item in the last column); `times_s` (B, L)
        int64 event times in seconds, or None. This default, for bag models, scores the bag
        of the codes with weight 1 each; sequence models override it.
        """
        return self.score_bag(codes, (codes >= 0).to(torch.float32))

    def fit_sequences(self, seqs: Sequences, *, seed: int = 0, on_epoch: EpochCallback | None = None) -> FitReport:
        """Learn from time-ordered histories; this default, for bag models, fits their bag view."""
        return self.fit(seqs.to_csr(), seed=seed, on_epoch=on_epoch)

    @abc.abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every learned parameter and buffer, by name, for saving."""

    @abc.abstractmethod
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `tensors()`; shapes must match `n_items` and `config`."""

    def to(self, device: torch.device | str) -> Self:
        """Move the model to `device` (models holding torch modules override and call super)."""
        self.device = torch.device(device)
        return self

    def hyperparameters(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


def densify_bag(index: torch.Tensor, weights: torch.Tensor, n_items: int) -> torch.Tensor:
    """The dense (B, n_items) rows of bags (see `score_bag`); repeated items add up, -1 is skipped."""
    known = index >= 0
    x = torch.zeros(index.shape[0], n_items, device=index.device, dtype=weights.dtype)  # (B, I)
    # Empty slots add 0 to item 0, which changes nothing.
    return x.scatter_add_(1, torch.where(known, index, 0), torch.where(known, weights, 0))


def merge_repeats(index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same bags with each item once: (index, weights), both (B, L).

    Within each row, the first slot of each distinct item carries the summed weight of all
    its slots; every other slot (repeats and empties) gets index 0 and weight 0, so an
    embedding bag over the result equals one over the original, and a function of each item's
    total (a norm, a 0/1 indicator) can be applied slot-wise. O(B L log L): sort, then a
    scatter-add per run of equal items.
    """
    weights = torch.where(index >= 0, weights, 0)
    sorted_index, order = index.sort(dim=1)  # (B, L), empties (-1) first
    sorted_weights = weights.gather(1, order)  # (B, L)
    starts = torch.ones_like(sorted_index, dtype=torch.bool)  # (B, L): first slot of each run
    starts[:, 1:] = sorted_index[:, 1:] != sorted_index[:, :-1]
    run = starts.cumsum(dim=1) - 1  # (B, L): which run a slot belongs to, 0, 1, 2, ... per row
    totals = torch.zeros_like(sorted_weights).scatter_add_(1, run, sorted_weights)  # (B, L) per run
    keep = starts & (sorted_index >= 0)
    merged_weights = torch.where(keep, totals.gather(1, run), 0)
    return torch.where(keep, sorted_index, 0), merged_weights


class BagLinear:
    """`linear(densify_bag(index, weights))` without the dense input: a gather-sum of the
    weight's columns (an embedding bag), O(B L H) instead of O(B n_items H).

    The embedding bag wants the weight as (n_items, H) rows, so a transposed copy is kept and
    made again whenever the weight changes (training, loading, moving to another device).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._rows = torch.empty(0)

    def __call__(self, linear: nn.Module, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(B, H) for bags whose empty slots already have index 0 and weight 0 (see merge_repeats)."""
        assert isinstance(linear, nn.Linear), f"BagLinear needs an nn.Linear, got {type(linear).__name__}"
        w = linear.weight  # (H, I)
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if key != self._key:
            self._rows, self._key = w.detach().t().contiguous(), key  # (I, H)
        h = F.embedding_bag(index, self._rows, per_sample_weights=weights.to(self._rows.dtype), mode="sum")
        return h if linear.bias is None else h + linear.bias  # (B, H)


# kind -> class; filled by `register` in each model module and read by checkpoint loading
# and the command line, so a new model needs no edit anywhere else.
REGISTRY: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    assert cls.kind not in REGISTRY, f"two recommenders claim kind {cls.kind!r}"
    REGISTRY[cls.kind] = cls
    return cls


def pick_device(preference: str = "auto") -> torch.device:
    """`auto` -> cuda when torch sees a GPU, else cpu; `cpu`/`cuda` as asked."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU; use 'auto' or 'cpu'")
    return torch.device(preference)
