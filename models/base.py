"""The one interface every recommender in `models/` implements.

A recommender is fitted on a user x item interaction matrix and then scores batches of
user histories over the whole catalog. Nothing here knows about Kafka: the stream worker
hands `score` a dense (B, n_items) tensor built from its rolling per-user state, and the
offline evaluation hands it rows of a held-out matrix. Higher score = better.

Every model keeps its learned parameters as named tensors (`tensors()`) and its
hyperparameters as a dataclass (`config`), which is all `models.checkpoint` needs to save
and load it without pickle.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import scipy.sparse as sp
import torch


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

    @abc.abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every learned parameter and buffer, by name, for saving."""

    @abc.abstractmethod
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `tensors()`; shapes must match `n_items` and `config`."""

    def to(self, device: torch.device | str) -> Recommender:
        """Move the model to `device` (models holding torch modules override and call super)."""
        self.device = torch.device(device)
        return self

    def hyperparameters(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


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
