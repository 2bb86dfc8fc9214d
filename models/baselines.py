"""Non-neural baselines: popularity, EASE and ItemKNN.

They make the generative models' numbers meaningful (a model that does not beat popularity
has learned nothing personal) and serve as a cheap fallback in the worker. Each keeps its
learned state as tensors, so checkpoints and `score` work exactly as for the neural models.

Shapes: B = users in a batch, I = n_items, K = neighbours per item.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from models.base import EpochCallback, FitReport, Recommender, register


@dataclass
class PopularityConfig:
    pass  # nothing to tune: an item's score is how many training users interacted with it


@register
class Popularity(Recommender):
    """Everyone gets the same ranking: items by number of training interactions."""

    kind = "pop"
    Config = PopularityConfig

    def __init__(self, n_items: int, config=None) -> None:
        super().__init__(n_items, config)
        self.item_counts = torch.zeros(n_items)  # (I,)

    def fit(self, X: sp.csr_matrix, *, seed: int = 0, on_epoch: EpochCallback | None = None) -> FitReport:
        start = time.perf_counter()
        counts = np.asarray((X > 0).sum(axis=0), dtype=np.float32).ravel()  # (I,)
        self.item_counts = torch.from_numpy(counts).to(self.device)
        return FitReport(seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def score(self, X: torch.Tensor) -> torch.Tensor:
        return self.item_counts.expand(X.shape[0], -1).clone()  # (B, I); a copy the caller may mask

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"item_counts": self.item_counts}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        assert tensors["item_counts"].shape == (self.n_items,), "item_counts does not match the catalog"
        self.item_counts = tensors["item_counts"].to(self.device)

    def to(self, device: torch.device | str) -> Popularity:
        super().to(device)
        self.item_counts = self.item_counts.to(self.device)
        return self


@dataclass
class EASEConfig:
    lam: float = 500.0  # L2 penalty lambda; Steck reports 200-1000 working well on ML-20M-sized data


@register
class EASE(Recommender):
    """Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019.

    Item-item weights B = argmin ||X - XB||^2 + lam ||B||^2 subject to diag(B) = 0, in closed
    form: P = (X^T X + lam I)^-1, B_ij = -P_ij / P_jj, B_jj = 0. Scores are X B. Cost: one
    I x I inverse (ML-20M: 20k x 20k, about 3 GB in float64), so it suits catalogs up to ~50k items.
    """

    kind = "ease"
    Config = EASEConfig

    def __init__(self, n_items: int, config=None) -> None:
        super().__init__(n_items, config)
        self.B = torch.zeros(n_items, n_items)  # (I, I)

    def fit(self, X: sp.csr_matrix, *, seed: int = 0, on_epoch: EpochCallback | None = None) -> FitReport:
        start = time.perf_counter()
        X = sp.csr_matrix(X, dtype=np.float64)
        G = torch.from_numpy((X.T @ X).toarray()).to(self.device)  # (I, I) Gram matrix, float64
        G.diagonal().add_(self.config.lam)
        # G + lam I is symmetric positive definite, so a Cholesky inverse is stable and cheaper.
        # At most two I x I float64 matrices live at once (ML-20M: 2 x 3.2 GB), hence the dels.
        L = torch.linalg.cholesky(G)
        del G
        P = torch.cholesky_inverse(L)  # (I, I)
        del L
        P.div_(-torch.diagonal(P).clone())  # B_ij = -P_ij / P_jj: column j divided by -P_jj
        P.diagonal().zero_()
        self.B = P.float()
        return FitReport(seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def score(self, X: torch.Tensor) -> torch.Tensor:
        return X @ self.B  # (B, I)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"B": self.B}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        assert tensors["B"].shape == (self.n_items, self.n_items), "B does not match the catalog"
        self.B = tensors["B"].to(self.device)

    def to(self, device: torch.device | str) -> EASE:
        super().to(device)
        self.B = self.B.to(self.device)
        return self


@dataclass
class ItemKNNConfig:
    k: int = 100  # neighbours kept per item
    shrink: float = 0.0  # added to the cosine denominator; damps similarities built on few co-occurrences
    block: int = 1024  # items whose similarities are computed at once (bounds memory to I x block)


@register
class ItemKNN(Recommender):
    """Item-based nearest neighbours with cosine similarity (Sarwar et al. 2001; Deshpande & Karypis 2004).

    s_ij = x_i . x_j / (|x_i| |x_j| + shrink) over the item columns x_i of X; for each target
    item j only its k most similar items are kept. The score of j for a user is the sum of
    s_ij over the items i in the user's history.
    """

    kind = "itemknn"
    Config = ItemKNNConfig

    def __init__(self, n_items: int, config=None) -> None:
        super().__init__(n_items, config)
        k = min(self.config.k, n_items)
        self.neighbours = torch.zeros(n_items, k, dtype=torch.int64)  # (I, K): for target j, items i
        self.similarities = torch.zeros(n_items, k)  # (I, K): s_ij for those items
        self._S_t: torch.Tensor | None = None  # sparse (I, I) with row j = target j, built lazily

    def fit(self, X: sp.csr_matrix, *, seed: int = 0, on_epoch: EpochCallback | None = None) -> FitReport:
        start = time.perf_counter()
        c, k = self.config, self.neighbours.shape[1]
        Xc = sp.csc_matrix(X, dtype=np.float32)
        norms = np.sqrt(np.asarray(Xc.multiply(Xc).sum(axis=0)).ravel())  # (I,)
        neighbours, similarities = [], []
        for lo in range(0, self.n_items, c.block):
            hi = min(lo + c.block, self.n_items)
            co = torch.from_numpy((Xc.T @ Xc[:, lo:hi]).toarray())  # (I, b) co-occurrence counts
            sims = co / torch.from_numpy(np.outer(norms, norms[lo:hi]) + c.shrink + 1e-12)
            sims[torch.arange(lo, hi), torch.arange(hi - lo)] = 0.0  # an item is not its own neighbour
            top = torch.topk(sims, k, dim=0)  # over source items i, per target column
            neighbours.append(top.indices.T)  # (b, K)
            similarities.append(top.values.T)  # (b, K)
        self.neighbours = torch.cat(neighbours).to(self.device)
        self.similarities = torch.cat(similarities).float().to(self.device)
        self._S_t = None
        return FitReport(seconds=time.perf_counter() - start)

    def _similarity_t(self) -> torch.Tensor:
        """Sparse CSR (I, I) matrix whose row j holds target j's neighbour similarities.

        CSR, not COO: its matrix product is over ten times faster on the CPU.
        """
        if self._S_t is None:
            n, k = self.neighbours.shape
            columns, order = torch.sort(self.neighbours, dim=1)  # CSR keeps each row's columns sorted
            values = torch.gather(self.similarities, 1, order)
            row_starts = torch.arange(0, n * k + 1, k, device=self.device)  # exactly k entries per row
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta state"
                self._S_t = torch.sparse_csr_tensor(row_starts, columns.reshape(-1), values.reshape(-1), (n, n))
        return self._S_t

    @torch.inference_mode()
    def score(self, X: torch.Tensor) -> torch.Tensor:
        return (self._similarity_t() @ X.T).T.contiguous()  # (I, I) x (I, B) -> (B, I)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"neighbours": self.neighbours, "similarities": self.similarities}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        assert tensors["neighbours"].shape == self.neighbours.shape, "neighbours do not match config.k"
        self.neighbours = tensors["neighbours"].to(self.device)
        self.similarities = tensors["similarities"].to(self.device)
        self._S_t = None

    def to(self, device: torch.device | str) -> ItemKNN:
        super().to(device)
        self.neighbours, self.similarities = (
            self.neighbours.to(self.device),
            self.similarities.to(self.device),
        )
        self._S_t = None
        return self
