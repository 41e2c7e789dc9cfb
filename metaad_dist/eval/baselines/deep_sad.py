"""Deep SAD and its one-class special case, Deep SVDD.

Ruff, Vandermeulen, Goernitz, Binder, Mueller, Mueller, Kloft, "Deep Semi-Supervised Anomaly
Detection", ICLR 2020; Ruff, Vandermeulen, Goernitz, Deecke, Siddiqui, Binder, Mueller, Kloft,
"Deep One-Class Classification", ICML 2018.

A bias-free network phi maps rows into R^p; the centre c is the mean of phi over the training
normal rows at initialisation (coordinates closer to 0 than 0.1 pushed to +-0.1, as in the
authors' code). The loss pulls normal rows toward c and pushes labelled anomalies away with
the inverse squared distance:

    loss = mean_normal ||phi(x) - c||^2 + eta * mean_anomaly (||phi(x) - c||^2 + 1e-6)^-1

Score: ||phi(x) - c||^2. Bias terms are left out on purpose (the paper's Proposition: with
biases the trivial constant map to c minimises the normal term).

Deviations from the paper, both as in DeepOD (the implementation behind ANCHORS.md): no
autoencoder pre-training of phi, and mini-batches drawn half normal / half labelled anomaly
(with a few labelled rows per family, uniform batches would almost never contain one).
With no anomaly rows this is Deep SVDD (one-class, uniform batches over normal rows).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from metaad_dist.config import EvalConfig
from metaad_dist.errors import ConfigError
from metaad_dist.eval.baselines.training import (
    Anomalies, Scorer, adam, as_rows, balanced_batch, batched, check_net_settings, device_or_cpu,
    mlp_network, positive, seeded, stack_anomalies, steps_per_epoch,
)

CENTRE_EPS = 0.1  # the authors' guard against centre coordinates that a zero unit matches trivially
DIST_EPS = 1e-6  # keeps the inverse distance finite for an anomaly mapped onto c


@torch.no_grad()
def _centre(net: torch.nn.Module, normal: torch.Tensor) -> torch.Tensor:
    c = torch.cat([net(normal[i:i + 65536]) for i in range(0, len(normal), 65536)]).mean(dim=0)
    small = c.abs() < CENTRE_EPS
    c[small & (c < 0)] = -CENTRE_EPS
    c[small & (c >= 0)] = CENTRE_EPS
    return c


def fit_deep_sad(
    normal_x: np.ndarray,
    anomaly_x: Optional[Anomalies],
    seed: int,
    settings: EvalConfig = EvalConfig(),
    device: Optional[torch.device] = None,
) -> Scorer:
    """Train Deep SAD (Deep SVDD when `anomaly_x` is None or empty) and return its scorer."""
    check_net_settings(settings)
    positive(settings, "deep_sad_rep_dim")
    if settings.deep_sad_eta < 0:
        raise ConfigError(f"eval.deep_sad_eta={settings.deep_sad_eta}; expected >= 0")
    device = device_or_cpu(device)
    normal = as_rows(normal_x, "normal_x")
    anomalies = stack_anomalies(anomaly_x if anomaly_x is not None else {}, normal.shape[1], required=False)
    rng = seeded(seed)
    net = mlp_network(normal.shape[1], settings.net_hidden_dims, settings.deep_sad_rep_dim, bias=False).to(device)
    normal_t = torch.as_tensor(normal, device=device)
    anomaly_t = torch.as_tensor(anomalies, device=device)
    c = _centre(net, normal_t)
    optimizer = adam(net.parameters(), settings)
    batch = settings.net_batch_size
    net.train()
    for _ in range(settings.net_epochs):
        for _ in range(steps_per_epoch(len(normal) + len(anomalies), settings)):
            if len(anomalies):
                ni, ai = balanced_batch(rng, len(normal), len(anomalies), batch)
            else:
                ni, ai = rng.integers(0, len(normal), batch), np.zeros(0, dtype=np.int64)
            dist_n = ((net(normal_t[ni]) - c) ** 2).sum(dim=1)
            dist_a = ((net(anomaly_t[ai]) - c) ** 2).sum(dim=1)
            # Mean over the whole batch, as in the paper's 1/(n+m) normalisation.
            loss = (dist_n.sum() + settings.deep_sad_eta * (dist_a + DIST_EPS).reciprocal().sum()) / batch
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()

    def score(x: np.ndarray) -> np.ndarray:
        return batched(lambda t: ((net(t) - c) ** 2).sum(dim=1), x, device)

    return score


def fit_deep_svdd(
    normal_x: np.ndarray, seed: int, settings: EvalConfig = EvalConfig(), device: Optional[torch.device] = None
) -> Scorer:
    """One-class Deep SVDD: Deep SAD without labelled anomalies."""
    return fit_deep_sad(normal_x, None, seed, settings, device)
