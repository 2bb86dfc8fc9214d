"""Mult-VAE and Mult-DAE: Liang, Krishnan, Hoffman, Jebara, "Variational Autoencoders for
Collaborative Filtering", WWW 2018 (reference code: dawenl/vae_cf).

A user's history x_u (a row of the click matrix) is explained by a multinomial over the
catalog whose probabilities come from a decoder f_theta(z_u). Mult-VAE puts a Gaussian
posterior q(z_u | x_u) = N(mu_q, diag(exp(logvar_q))) on z_u and maximises the annealed ELBO

    log p(x_u | z_u) - beta * KL(q(z_u | x_u) || N(0, I)),   beta = min(anneal_cap, step / total_anneal_steps)

Mult-DAE drops the KL term and the sampling: a denoising autoencoder with the same
multinomial likelihood. Both corrupt the L2-normalised input with dropout while training
and score with the deterministic path (for the VAE: the posterior mean mu_q).

Shapes: B = users in a batch, I = n_items, H = hidden_dim (600), D = latent_dim (200).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import BagLinear, EpochCallback, FitReport, Recommender, merge_repeats, register


@dataclass
class MultVAEConfig:
    """Defaults from the paper (Sec. 4.3) and the authors' notebook."""

    hidden_dim: int = 600  # encoder I -> 600 -> D, decoder D -> 600 -> I
    latent_dim: int = 200  # size of z_u (mu_q and logvar_q are each this wide)
    dropout: float = 0.5  # on the normalised input, training only
    lr: float = 1e-3  # Adam
    batch_size: int = 500
    epochs: int = 200
    anneal_cap: float = 0.2  # beta never exceeds this
    # The paper's 200,000 steps fits ML-20M (~230 steps an epoch); with fewer steps per epoch
    # beta stays near 0 unless this is lowered, which the evaluation protocols do.
    total_anneal_steps: int = 200_000
    lam: float = 0.0  # L2 penalty lam * sum(W^2) on the weight matrices; the notebook uses 0 for the VAE


@dataclass
class MultDAEConfig:
    """Defaults from the paper and notebook: lam = 0.01 / batch_size, no KL term."""

    hidden_dim: int = 600
    latent_dim: int = 200  # the bottleneck, I -> 600 -> 200 -> 600 -> I
    dropout: float = 0.5
    lr: float = 1e-3
    batch_size: int = 500
    epochs: int = 200
    lam: float = 0.01 / 500


class _Autoencoder(nn.Module):
    """q-network I -> H -> (2D or D) and p-network D -> H -> I, tanh in between."""

    def __init__(self, n_items: int, hidden_dim: int, latent_dim: int, dropout: float, variational: bool):
        super().__init__()
        self.variational = variational
        self.latent_dim = latent_dim
        # The VAE encoder outputs mu_q and logvar_q side by side, so its last layer is 2D wide.
        q_out = 2 * latent_dim if variational else latent_dim
        self.q_layers = nn.ModuleList([nn.Linear(n_items, hidden_dim), nn.Linear(hidden_dim, q_out)])
        self.p_layers = nn.ModuleList([nn.Linear(latent_dim, hidden_dim), nn.Linear(hidden_dim, n_items)])
        self.drop = nn.Dropout(dropout)
        for layer in [*self.q_layers, *self.p_layers]:
            # As in the notebook: Xavier weights, tiny random biases.
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.drop(F.normalize(x, dim=1))  # (B, I), unit L2 norm per user, then corrupted
        return self.encode_first_layer(self.q_layers[0](h))

    def encode_first_layer(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rest of the q-network from the first layer's pre-activation a (B, H)."""
        h = self.q_layers[1](torch.tanh(a))  # (B, 2D) or (B, D)
        if not self.variational:
            return torch.tanh(h), None  # the DAE's tanh bottleneck
        mu_q, logvar_q = h[:, : self.latent_dim], h[:, self.latent_dim :]  # (B, D) each
        return mu_q, logvar_q

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.p_layers[1](torch.tanh(self.p_layers[0](z)))  # (B, I) logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, I) and KL(q || prior) per user (B,) (zeros for the DAE)."""
        mu_q, logvar_q = self.encode(x)
        if logvar_q is None:
            return self.decode(mu_q), torch.zeros(x.shape[0], device=x.device)
        std_q = torch.exp(0.5 * logvar_q)
        # Reparameterisation trick while training; the posterior mean at evaluation.
        z = mu_q + std_q * torch.randn_like(std_q) if self.training else mu_q  # (B, D)
        kl = 0.5 * torch.sum(-logvar_q + torch.exp(logvar_q) + mu_q**2 - 1, dim=1)  # (B,)
        return self.decode(z), kl


@register
class MultVAE(Recommender):
    kind = "multvae"
    Config: ClassVar[type] = MultVAEConfig
    variational = True

    def __init__(self, n_items: int, config=None) -> None:
        super().__init__(n_items, config)
        c = self.config
        assert c.latent_dim > 0 and c.hidden_dim > 0, f"layer sizes must be positive, got {c}"
        self.net = _Autoencoder(n_items, c.hidden_dim, c.latent_dim, c.dropout, self.variational)
        self._first_layer = BagLinear()

    def to(self, device: torch.device | str) -> MultVAE:
        self.net.to(device)
        self._first_layer = BagLinear()
        return super().to(device)

    def beta(self, update_count: int) -> float:
        """The KL weight after `update_count` gradient steps (0 for the DAE)."""
        if not self.variational:
            return 0.0
        return min(self.config.anneal_cap, update_count / max(1, self.config.total_anneal_steps))

    def neg_elbo(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        """Batch mean of -log p(x|z) + beta * KL, plus the L2 penalty on weights."""
        logits, kl = self.net(x)
        neg_ll = -torch.sum(F.log_softmax(logits, dim=1) * x, dim=1)  # (B,) multinomial log-likelihood
        loss = torch.mean(neg_ll + beta * kl)
        if self.config.lam > 0:
            weights = [m.weight for m in [*self.net.q_layers, *self.net.p_layers]]
            loss = loss + self.config.lam * sum(torch.sum(w**2) for w in weights)
        return loss

    def fit(self, X: sp.csr_matrix, *, seed: int = 0, on_epoch: EpochCallback | None = None) -> FitReport:
        assert X.shape[1] == self.n_items, f"X has {X.shape[1]} items, the model {self.n_items}"
        c = self.config
        torch.manual_seed(seed)  # weights were drawn in __init__; this seeds dropout and z noise
        rng = np.random.default_rng(seed)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=c.lr)
        report, start, update_count = FitReport(), time.perf_counter(), 0
        self.curve = report.curve  # the training curve so far, for progress displays (TrainProgress.loss)
        X = X.tocsr().astype(np.float32)
        for epoch in range(1, c.epochs + 1):
            self.net.train()
            total = 0.0
            order = rng.permutation(X.shape[0])
            for lo in range(0, len(order), c.batch_size):
                # Rows go dense one batch at a time, so memory is bounded by batch_size x n_items.
                x = torch.from_numpy(X[order[lo : lo + c.batch_size]].toarray()).to(self.device)  # (B, I)
                loss = self.neg_elbo(x, self.beta(update_count))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                update_count += 1
                total += loss.item() * x.shape[0]
            report.curve.append({"epoch": epoch, "loss": total / X.shape[0], "beta": self.beta(update_count)})
            if on_epoch is not None and on_epoch(self, epoch) is False:
                break
        self.net.eval()
        report.seconds = time.perf_counter() - start
        return report

    @torch.inference_mode()
    def score(self, X: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        mu_q, _ = self.net.encode(X)  # dropout is off in eval mode
        return self.net.decode(mu_q)  # (B, I) logits; softmax would not change the ranking

    @torch.inference_mode()
    def score_bag(self, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`score` of the bags' dense rows, with the first layer as a gather-sum over <= L items."""
        self.net.eval()
        index, weights = merge_repeats(index, weights)  # (B, L): each item once, with its total weight
        # F.normalize divides the dense row by max(||x||_2, 1e-12); ||x|| is over item totals,
        # which merge_repeats made (repeats of an item add up before squaring, as in the row).
        norm = weights.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)  # (B, 1)
        mu_q, _ = self.net.encode_first_layer(self._first_layer(self.net.q_layers[0], index, weights / norm))
        return self.net.decode(mu_q)  # (B, I)

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict())

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(tensors)
        self._first_layer = BagLinear()


@register
class MultDAE(MultVAE):
    kind = "multdae"
    Config = MultDAEConfig
    variational = False
