"""Supervised MLP: normal rows vs the labelled anomaly rows, class-balanced binary cross-entropy.

The plain supervised reference every few-shot method should beat (see e.g. Pang, Shen, Cao,
van den Hengel, "Deep Learning for Anomaly Detection: A Review", ACM Computing Surveys 2021,
section on weakly-supervised detection; Ruff et al., ICLR 2020, use the same baseline).
The network is the method's own encoder (``model.hidden_dims``, ``model.embed_dim``,
``model.dropout``; ReLU after every layer) with a linear output unit, so any gain of the method
over it comes from the training signal, not the architecture. Class balance: every mini-batch
is half normal, half anomaly in expectation, which has the same expected loss as weighting each
class by 1/n_class over uniform batches and a lower variance with a few labelled rows.
Score: the logit of P(anomaly | x).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from metaad_dist.config import EvalConfig, ModelConfig
from metaad_dist.eval.baselines.training import (
    Anomalies, Scorer, adam, as_rows, balanced_batch, batched, check_net_settings, device_or_cpu,
    seeded, stack_anomalies, steps_per_epoch,
)
from metaad_dist.model.networks import mlp


def supervised_network(in_dim: int, model: ModelConfig) -> nn.Sequential:
    encoder = mlp([in_dim, *model.hidden_dims, model.embed_dim], model.dropout, final_activation=True)
    return nn.Sequential(encoder, nn.Linear(model.embed_dim, 1))


def fit_supervised_mlp(
    normal_x: np.ndarray,
    anomaly_x: Anomalies,
    seed: int,
    model: ModelConfig = ModelConfig(),
    settings: EvalConfig = EvalConfig(),
    device: Optional[torch.device] = None,
) -> Scorer:
    """Train the classifier on normal (0) vs labelled anomaly (1) rows; return its scorer."""
    check_net_settings(settings)
    device = device_or_cpu(device)
    normal = as_rows(normal_x, "normal_x")
    anomalies = stack_anomalies(anomaly_x, normal.shape[1])
    rng = seeded(seed)
    net = supervised_network(normal.shape[1], model).to(device)
    normal_t = torch.as_tensor(normal, device=device)
    anomaly_t = torch.as_tensor(anomalies, device=device)
    optimizer = adam(net.parameters(), settings)
    bce = nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(settings.net_epochs):
        for _ in range(steps_per_epoch(len(normal) + len(anomalies), settings)):
            ni, ai = balanced_batch(rng, len(normal), len(anomalies), settings.net_batch_size)
            x = torch.cat([normal_t[ni], anomaly_t[ai]])
            y = torch.cat([torch.zeros(len(ni)), torch.ones(len(ai))]).to(device)
            loss = bce(net(x).squeeze(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    return lambda x: batched(lambda t: net(t).squeeze(1), x, device)
