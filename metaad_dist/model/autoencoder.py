"""Reconstruction evidence: an autoencoder fitted on the normal memory rows only.

Hawkins, He, Williams, Baxter, "Outlier detection using replicator neural networks", DaWaK 2002;
Sakurada & Yairi, "Anomaly detection using autoencoders with nonlinear dimensionality
reduction", MLSDA 2014. A row is surprising when the normal rows' low-dimensional structure
cannot rebuild it: this catches joint deviations (a usual value of each feature in an unusual
combination) that the kNN distance and the isolation depth, both dominated by single extreme
coordinates, rank low. It is separate from the meta-learner's own decoder, which shares its
encoder with the head and is pulled towards what the anomaly shots teach.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from metaad_dist.model.layers import mlp


class NormalAutoencoder(nn.Module):
    def __init__(self, in_dim: int, hidden: Sequence[int]):
        super().__init__()
        hidden = list(hidden)
        self.net = mlp([in_dim, *hidden, *reversed(hidden[:-1]), in_dim])

    @torch.no_grad()
    def fit(self, x: torch.Tensor, epochs: int, lr: float, batch_size: int, seed: int) -> None:
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
            optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=0.0, fused=True)
            order = torch.Generator(device="cpu").manual_seed(seed)
            for _ in range(epochs):
                perm = torch.randperm(len(x), generator=order).to(x.device)
                for i in range(0, len(x), batch_size):
                    batch = x[perm[i:i + batch_size]]
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
