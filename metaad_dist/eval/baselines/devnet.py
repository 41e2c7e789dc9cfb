"""DevNet: deviation networks.

Pang, Shen, van den Hengel, "Deep Anomaly Detection with Deviation Networks", KDD 2019.

A network phi maps a row to a scalar anomaly score. A Gaussian prior N(0, 1) stands for the
scores of normal rows: at every step `l` reference scores r_i ~ N(0, 1) are drawn and the
deviation is dev(x) = (phi(x) - mean(r)) / std(r). The deviation loss

    loss = (1 - y) |dev(x)| + y max(0, a - dev(x))

keeps normal rows (y = 0) near the prior mean and pushes labelled anomalies (y = 1) at least
`a` standard deviations above it (a = 5, l = 5000 in the paper). Mini-batches are half normal,
half labelled anomalies, as in the paper. Score: phi(x).

The paper's network is one hidden layer of 20 units trained with RMSprop; the defaults here
follow DeepOD (the implementation behind ANCHORS.md): bias-free MLP 100-50, Adam, batch 64.

Note on the anchors: DeepOD 0.4.1's ``DevLoss`` multiplies (B, 1) scores by (B,) labels, which
broadcasts to a B x B matrix, so every row gets (1 - p)|dev| + p max(0, a - dev) with p the
batch's anomaly share: a label-agnostic objective. This module implements the paper's loss. On
held-out families it scores below the anchor (UNSW-NB15, standard scaler: 0.74 vs 0.86 mean
AUROC); a replica of the broadcast in this code reproduced the anchor on the folds tried
(benchmarks/results/baselines_vs_anchors.md).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from metaad_dist.config import EvalConfig
from metaad_dist.eval.baselines.training import (
    Anomalies, Scorer, adam, as_rows, balanced_batch, batched, check_net_settings, device_or_cpu,
    mlp_network, positive, seeded, stack_anomalies, steps_per_epoch,
)


def deviation_loss(scores: torch.Tensor, is_anomaly: torch.Tensor, reference: torch.Tensor, margin: float) -> torch.Tensor:
    dev = (scores - reference.mean()) / reference.std()
    return torch.where(is_anomaly, torch.clamp(margin - dev, min=0.0), dev.abs()).mean()


def fit_devnet(
    normal_x: np.ndarray,
    anomaly_x: Anomalies,
    seed: int,
    settings: EvalConfig = EvalConfig(),
    device: Optional[torch.device] = None,
) -> Scorer:
    """Train DevNet on normal rows and labelled anomalies; return its scorer."""
    check_net_settings(settings)
    positive(settings, "devnet_margin", "devnet_reference_size")
    device = device_or_cpu(device)
    normal = as_rows(normal_x, "normal_x")
    anomalies = stack_anomalies(anomaly_x, normal.shape[1])
    rng = seeded(seed)
    prior = torch.Generator().manual_seed(seed)
    net = mlp_network(normal.shape[1], settings.net_hidden_dims, 1, bias=False).to(device)
    normal_t = torch.as_tensor(normal, device=device)
    anomaly_t = torch.as_tensor(anomalies, device=device)
    optimizer = adam(net.parameters(), settings)
    batch = settings.net_batch_size
    net.train()
    for _ in range(settings.net_epochs):
        for _ in range(steps_per_epoch(len(normal) + len(anomalies), settings)):
            ni, ai = balanced_batch(rng, len(normal), len(anomalies), batch)
            x = torch.cat([normal_t[ni], anomaly_t[ai]])
            is_anomaly = torch.cat([torch.zeros(len(ni), dtype=torch.bool), torch.ones(len(ai), dtype=torch.bool)]).to(device)
            reference = torch.randn(settings.devnet_reference_size, generator=prior).to(device)
            loss = deviation_loss(net(x).squeeze(1), is_anomaly, reference, settings.devnet_margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    return lambda x: batched(lambda t: net(t).squeeze(1), x, device)
