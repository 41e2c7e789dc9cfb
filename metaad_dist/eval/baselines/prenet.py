"""PReNet: weakly-supervised anomaly detection by pairwise relation prediction.

Pang, Shen, Jin, van den Hengel, "Deep Weakly-supervised Anomaly Detection", KDD 2023
(arXiv 1910.13601).

A shared encoder psi embeds both rows of a pair; a linear layer on the concatenation
[psi(x_i), psi(x_j)] predicts an ordinal relation score: 8 for (anomaly, anomaly), 4 for
(anomaly, unlabelled), 0 for (unlabelled, unlabelled) pairs, fitted with the absolute error.
Mini-batches are stratified as in the paper: a quarter (a, a), a quarter (a, u), half (u, u).
Here "unlabelled" rows are the training normal rows. A new row x is scored against E random
labelled anomalies and E random normal rows, in the paper's order:

    s(x) = mean_i f(a_i, x) / 2 + mean_j f(x, u_j) / 2        (E = 30)

so an anomalous x looks like the (a, a) and (a, u) pairs, a normal x like (a, u) and (u, u).
Defaults for the encoder and optimiser follow DeepOD (MLP 100-50 -> 128, bias-free, Adam).
The pairing at scoring time is drawn from the seed, so scores are deterministic.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from metaad_dist.config import EvalConfig
from metaad_dist.errors import ConfigError
from metaad_dist.eval.baselines.training import (
    Anomalies, Scorer, adam, as_rows, check_net_settings, device_or_cpu, mlp_network,
    positive, seeded, stack_anomalies, steps_per_epoch,
)

SCORE_ROWS = 4096  # rows scored per chunk (each against 2E partners); memory only


class PairNet(nn.Module):
    """psi (shared encoder) and the linear relation head over [psi(x_i), psi(x_j)]."""

    def __init__(self, in_dim: int, hidden_dims, rep_dim: int):
        super().__init__()
        self.encoder = mlp_network(in_dim, hidden_dims, rep_dim, bias=False)
        self.head = nn.Linear(2 * rep_dim, 1, bias=False)

    def relation(self, z_left: torch.Tensor, z_right: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([z_left, z_right], dim=-1)).squeeze(-1)

    def forward(self, x_left: torch.Tensor, x_right: torch.Tensor) -> torch.Tensor:
        return self.relation(self.encoder(x_left), self.encoder(x_right))


def _pair_batch(rng: np.random.Generator, n_normal: int, n_anomaly: int, batch: int):
    """(left, right) indices into [normal; anomaly] rows and the pair type 0 (a,a), 1 (a,u), 2 (u,u)."""
    n_aa = batch // 4
    n_au = batch // 4
    n_uu = batch - n_aa - n_au
    a = lambda k: n_normal + rng.integers(0, n_anomaly, k)  # noqa: E731
    u = lambda k: rng.integers(0, n_normal, k)  # noqa: E731
    left = np.concatenate([a(n_aa), a(n_au), u(n_uu)])
    right = np.concatenate([a(n_aa), u(n_au), u(n_uu)])
    kind = np.repeat([0, 1, 2], [n_aa, n_au, n_uu])
    return left, right, kind


def fit_prenet(
    normal_x: np.ndarray,
    anomaly_x: Anomalies,
    seed: int,
    settings: EvalConfig = EvalConfig(),
    device: Optional[torch.device] = None,
) -> Scorer:
    """Train PReNet on normal rows and labelled anomalies; return its scorer."""
    check_net_settings(settings)
    positive(settings, "prenet_rep_dim", "prenet_score_pairs")
    targets = [float(t) for t in settings.prenet_pair_targets]
    if len(targets) != 3 or not targets[0] > targets[1] > targets[2]:
        raise ConfigError(
            f"eval.prenet_pair_targets={targets}; expected three decreasing scores for (a,a), (a,u), (u,u)"
        )
    device = device_or_cpu(device)
    normal = as_rows(normal_x, "normal_x")
    anomalies = stack_anomalies(anomaly_x, normal.shape[1])
    rng = seeded(seed)
    net = PairNet(normal.shape[1], settings.net_hidden_dims, settings.prenet_rep_dim).to(device)
    rows = torch.as_tensor(np.concatenate([normal, anomalies]), device=device)
    target_of = torch.tensor(targets, device=device)
    optimizer = adam(net.parameters(), settings)
    net.train()
    for _ in range(settings.net_epochs):
        for _ in range(steps_per_epoch(len(normal) + len(anomalies), settings)):
            left, right, kind = _pair_batch(rng, len(normal), len(anomalies), settings.net_batch_size)
            pred = net(rows[left], rows[right])
            loss = (pred - target_of[torch.as_tensor(kind, device=device)]).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        z_normal = torch.cat([net.encoder(rows[i:min(i + SCORE_ROWS, len(normal))]) for i in range(0, len(normal), SCORE_ROWS)])
        z_anomaly = net.encoder(rows[len(normal):])
    pairs = settings.prenet_score_pairs

    def score(x: np.ndarray) -> np.ndarray:
        x = as_rows(x, "x")
        draw = np.random.default_rng([seed, len(x)])
        out = []
        with torch.no_grad():
            for i in range(0, len(x), SCORE_ROWS):
                z = net.encoder(torch.as_tensor(x[i:i + SCORE_ROWS], device=device))
                k = len(z)
                za = z_anomaly[torch.as_tensor(draw.integers(0, len(z_anomaly), (k, pairs)), device=device)]
                zu = z_normal[torch.as_tensor(draw.integers(0, len(z_normal), (k, pairs)), device=device)]
                zx = z.unsqueeze(1).expand(k, pairs, z.shape[1])
                s = 0.5 * net.relation(za, zx).mean(dim=1) + 0.5 * net.relation(zx, zu).mean(dim=1)
                out.append(s.double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)

    return score
