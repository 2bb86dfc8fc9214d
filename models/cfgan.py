"""CFGAN: Chae, Kang, Kim, Lee, "CFGAN: A Generic Collaborative Filtering Framework based on
Generative Adversarial Networks", CIKM 2018.

The generator G reads a user's purchase vector c_u (the condition; no noise z, as in the
authors' code) and outputs a real-valued vector r_hat_u over the catalog. The discriminator
D sees (c_u, r_u) pairs: the real purchase vector r_u, or the generated one masked to the
purchased items, r_hat_u * e_u, so G is judged only where the user actually bought. Two
negative-sampling schemes stop G from predicting 1 everywhere:

  ZR (zero reconstruction): a fraction S_zr of each user's unpurchased items is pulled to 0
      by the extra generator loss alpha * sum_j (r_hat_uj - 0)^2;
  PM (partial masking): a fraction S_pm of unpurchased items is added to the mask e_u, so D
      also sees (and penalises) G's values there.

"ZP" uses both, the setting behind the paper's ML-100K numbers. Training alternates steps_D
passes over the users for D with steps_G passes for G; one such round is one epoch here.

Defaults are the authors' ML-100K entry in `parameters.py` of their released code (as
reproduced by Pérez Maurera et al., ECIR 2022), with two differences, both because the
worker must score the histories of users it has never seen: the authors' ML-100K run is
"itemBased" (G conditions on an item's vector over users), ours is user-based as in the
paper's exposition; and the ZR/PM negatives are drawn per mini-batch as Bernoulli(S) masks
rather than once per epoch as exactly floor(S * n_unobserved) items (same expectation).
The authors' code uses alpha = 0.03 for ML-100K; the paper's text reports 0.1.

Shapes: B = users in a batch, I = n_items, H_G / H_D = hidden widths.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import BagLinear, EpochCallback, FitReport, Recommender, merge_repeats, register


@dataclass
class CFGANConfig:
    hidden_dim_G: int = 400
    hidden_layers_G: int = 1
    hidden_dim_D: int = 125
    hidden_layers_D: int = 1
    reg_G: float = 0.001  # L2: reg_G * sum(w^2) / 2 over G's weights and biases (TensorFlow's l2_loss)
    reg_D: float = 0.0
    lr_G: float = 1e-4  # Adam
    lr_D: float = 1e-4
    batch_size_G: int = 32
    batch_size_D: int = 64
    steps_G: int = 4  # passes over the users for G per epoch
    steps_D: int = 2  # passes over the users for D per epoch
    scheme: Literal["ZR", "PM", "ZP"] = "ZP"
    S_zr: float = 0.7  # fraction of unpurchased items pulled to zero (ZR)
    S_pm: float = 0.7  # fraction of unpurchased items added to the mask (PM)
    alpha: float = 0.03  # weight of the ZR loss
    epochs: int = 250  # the authors' 1000 G passes / steps_G


def _mlp(n_in: int, hidden: int, layers: int, n_out: int) -> nn.Sequential:
    """`layers` sigmoid hidden layers of width `hidden`, then a linear output (authors' code)."""
    dims = [n_in] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        modules += [nn.Linear(a, b), nn.Sigmoid()]
    modules.append(nn.Linear(dims[-1], n_out))
    for m in modules:
        if isinstance(m, nn.Linear):
            # The authors' initialisation: Glorot-uniform weights, biases uniform in +-0.01.
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.uniform_(m.bias, -0.01, 0.01)
    return nn.Sequential(*modules)


@register
class CFGAN(Recommender):
    kind = "cfgan"
    Config = CFGANConfig

    def __init__(self, n_items: int, config=None) -> None:
        super().__init__(n_items, config)
        c = self.config
        assert c.scheme in ("ZR", "PM", "ZP"), f"scheme must be ZR, PM or ZP, got {c.scheme!r}"
        self.G = _mlp(n_items, c.hidden_dim_G, c.hidden_layers_G, n_items)  # c_u -> r_hat_u
        self.D = _mlp(2 * n_items, c.hidden_dim_D, c.hidden_layers_D, 1)  # (c_u, r_u) -> logit of "real"
        self._first_layer = BagLinear()

    def to(self, device: torch.device | str) -> CFGAN:
        self.G.to(device)
        self.D.to(device)
        self._first_layer = BagLinear()
        return super().to(device)

    def _negatives(self, x: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
        """A (B, I) 0/1 mask: each unpurchased item with probability `ratio`."""
        u = torch.rand(x.shape, generator=gen, device=self.device)
        return ((u < ratio) & (x == 0)).float()

    def _mask(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """e_u, plus the partial-masking negatives under PM/ZP."""
        if self.config.scheme == "ZR":
            return x
        return x + self._negatives(x, self.config.S_pm, gen)

    def _d_step(self, x: torch.Tensor, opt: torch.optim.Optimizer, gen: torch.Generator) -> float:
        with torch.no_grad():
            fake = self.G(x) * self._mask(x, gen)  # (B, I), judged only on the mask
        d_real = self.D(torch.cat([x, x], dim=1))  # (B, 1): condition and the real vector
        d_fake = self.D(torch.cat([x, fake], dim=1))  # (B, 1)
        real_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
        fake_loss = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        loss = real_loss + fake_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    def _g_step(self, x: torch.Tensor, opt: torch.optim.Optimizer, gen: torch.Generator) -> float:
        c = self.config
        r_hat = self.G(x)  # (B, I)
        d_fake = self.D(torch.cat([x, r_hat * self._mask(x, gen)], dim=1))  # (B, 1)
        loss = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        if c.scheme in ("ZR", "ZP"):
            zr = self._negatives(x, c.S_zr, gen)  # (B, I)
            loss = loss + c.alpha * torch.mean(torch.sum(r_hat**2 * zr, dim=1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    def fit(self, X: sp.csr_matrix, *, seed: int = 0, on_epoch: EpochCallback | None = None) -> FitReport:
        assert X.shape[1] == self.n_items, f"X has {X.shape[1]} items, the model {self.n_items}"
        c = self.config
        rng = np.random.default_rng(seed)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        # The authors add reg * sum(w^2) / 2 over all weights and biases to each loss; Adam's
        # weight_decay adds its gradient, reg * w, without a pass of the sum through autograd.
        opt_G = torch.optim.Adam(self.G.parameters(), lr=c.lr_G, weight_decay=c.reg_G, foreach=True)
        opt_D = torch.optim.Adam(self.D.parameters(), lr=c.lr_D, weight_decay=c.reg_D, foreach=True)
        X = (sp.csr_matrix(X) > 0).astype(np.float32)  # purchase vectors are 0/1
        report, start = FitReport(), time.perf_counter()
        self.curve = report.curve  # the training curve so far, for progress displays (TrainProgress.loss)
        for epoch in range(1, c.epochs + 1):
            self.G.train()  # `score` (e.g. from on_epoch) switches to eval mode
            self.D.train()
            losses = {}
            for name, step, passes, batch, opt in (
                ("loss_D", self._d_step, c.steps_D, c.batch_size_D, opt_D),
                ("loss_G", self._g_step, c.steps_G, c.batch_size_G, opt_G),
            ):
                total = 0.0
                for _ in range(passes):
                    order = rng.permutation(X.shape[0])
                    for lo in range(0, len(order), batch):
                        x = torch.from_numpy(X[order[lo : lo + batch]].toarray()).to(self.device)  # (B, I)
                        total += step(x, opt, gen) * x.shape[0]
                losses[name] = total / (passes * X.shape[0])
            report.curve.append({"epoch": epoch, **losses})
            if on_epoch is not None and on_epoch(self, epoch) is False:
                break
        report.seconds = time.perf_counter() - start
        return report

    @torch.inference_mode()
    def score(self, X: torch.Tensor) -> torch.Tensor:
        self.G.eval()
        return self.G((X > 0).float())  # (B, I): r_hat_u; the condition is the 0/1 purchase vector

    @torch.inference_mode()
    def score_bag(self, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`score` of the bags' dense rows, with G's first layer as a gather-sum over <= L items."""
        self.G.eval()
        index, weights = merge_repeats(index, weights)  # (B, L): each item once, with its total weight
        purchased = (weights > 0).float()  # (B, L): the 0/1 condition, as (X > 0) in `score`
        return self.G[1:](self._first_layer(self.G[0], index, purchased))  # (B, I)

    def tensors(self) -> dict[str, torch.Tensor]:
        # D is saved too, so a checkpoint can resume adversarial training, not only serve.
        return {
            **{f"G.{k}": v for k, v in self.G.state_dict().items()},
            **{f"D.{k}": v for k, v in self.D.state_dict().items()},
        }

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.G.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")})
        self.D.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("D.")})
        self._first_layer = BagLinear()
