"""Reconstruction evidence: how badly the normal rows' own structure rebuilds a row.

Hawkins, He, Williams, Baxter, "Outlier detection using replicator neural networks", DaWaK 2002;
Sakurada & Yairi, "Anomaly detection using autoencoders with nonlinear dimensionality
reduction", MLSDA 2014. A row is surprising when the normal rows' low-dimensional structure
cannot rebuild it: this catches joint deviations (a usual value of each feature in an unusual
combination) that the kNN distance and the isolation depth, both dominated by single extreme
coordinates, rank low. Both models here are fitted on the normal memory rows only and are
separate from the meta-learner's own decoder, which shares its encoder with the head and is
pulled towards what the anomaly shots teach.

- `PrincipalSubspace` (the default): the residual off the top principal components, the
  squared prediction error (Q statistic) of PCA process monitoring (Jackson & Mudholkar,
  Technometrics 1979; Shyu et al., "A novel anomaly detection scheme based on principal
  component classifier", ICDM 2003). It is the optimum a linear autoencoder of that width
  converges to (Baldi & Hornik, Neural Networks 1989), computed in closed form.
- `NormalAutoencoder`: a nonlinear autoencoder trained by AdamW. Measured here (seed 0, first
  fold), the 150-epoch fit leaves a higher validation-normal reconstruction error than the
  32-component subspace on all three benchmark datasets (NSL-KDD 0.060 vs 0.045, UNSW-NB15 0.016
  vs 0.004, TEP 0.32 vs 0.13) at 100x its cost, so it is kept as an option only.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from metaad_dist.model.layers import mlp


RECONSTRUCTIONS = ("pca", "autoencoder", "none")  # model.memory_reconstruction


def build_reconstruction(kind: str, in_dim: int, pca_components: int, hidden: Sequence[int], fit: Sequence[float]):
    """The memory's reconstruction model for `kind` (RECONSTRUCTIONS), or None: "none", or an
    autoencoder without layers (how checkpoints written before `kind` existed switched it off)."""
    if kind == "pca":
        return PrincipalSubspace(in_dim, pca_components)
    if kind == "autoencoder" and len(hidden):
        return NormalAutoencoder(in_dim, hidden, *fit)
    if kind in RECONSTRUCTIONS:
        return None
    raise ValueError(f"unknown reconstruction '{kind}'; expected one of {RECONSTRUCTIONS}")


class NormalAutoencoder(nn.Module):
    def __init__(self, in_dim: int, hidden: Sequence[int], epochs: int = 150, lr: float = 1e-3, batch_size: int = 128):
        super().__init__()
        hidden = list(hidden)
        self.net = mlp([in_dim, *hidden, *reversed(hidden[:-1]), in_dim])
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, seed: int) -> None:
        """Fresh weights, then AdamW on the mean squared error over shuffled mini-batches.

        The result depends only on (x, settings, seed): the initialisation and the batch order
        come from `seed`, and the caller's random state is left as it was.
        """
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.enable_grad():
            torch.manual_seed(seed)
            self.requires_grad_(True)
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
            self.train()
            # fused: one kernel for the whole update, about 20% of a step on CPU at this size
            # (results equal the per-tensor AdamW's to float rounding)
            optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=0.0, fused=True)
            order = torch.Generator(device="cpu").manual_seed(seed)
            for _ in range(self.epochs):
                perm = torch.randperm(len(x), generator=order).to(x.device)
                for i in range(0, len(x), self.batch_size):
                    batch = x[perm[i:i + self.batch_size]]
                    loss = (self.net(batch) - batch).pow(2).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        self.eval()
        self.requires_grad_(False)  # fitted once; no later optimiser may move it

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Mean squared reconstruction error per row (chunked: bounded memory)."""
        out = [(self.net(x[i:i + chunk]) - x[i:i + chunk]).pow(2).mean(dim=1) for i in range(0, len(x), chunk)]
        return torch.cat(out) if out else x.new_zeros(0)


class PrincipalSubspace(nn.Module):
    """Mean and top principal directions of the memory rows; buffers, so checkpoints carry them."""

    def __init__(self, in_dim: int, components: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("components", torch.zeros(components, in_dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, seed: int = 0) -> None:
        """(`seed` is unused: the fit is exact.) Eigenvectors of the covariance (in float64: d x d, whatever the number of rows), so the
        result is deterministic and memory does not grow with the rows beyond one pass."""
        self.mean.copy_(x.mean(dim=0))
        centred = (x - self.mean).double()
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        self.components.copy_(vectors[:, -len(self.components):].T.flip(0).to(self.components.dtype))

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Mean squared residual off the subspace per row (chunked: bounded memory)."""
        out = []
        for i in range(0, len(x), chunk):
            centred = x[i:i + chunk] - self.mean
            out.append((centred - (centred @ self.components.T) @ self.components).pow(2).mean(dim=1))
        return torch.cat(out) if out else x.new_zeros(0)
