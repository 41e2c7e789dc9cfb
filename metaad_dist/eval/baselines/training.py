"""What the neural baselines share: inputs, networks, balanced mini-batches, a plain Adam loop.

Every baseline here is numpy in, numpy out: it trains on already-scaled features and returns a
scorer ``x -> anomaly scores`` (higher = more anomalous). Hyper-parameters come from
:class:`metaad_dist.config.EvalConfig` (``eval.net_*`` and the per-baseline fields), so the
defaults live in one place. The defaults follow DeepOD's tabular models, the peer
implementation behind ANCHORS.md (MLP 100-50, 50 epochs, batch 64, Adam lr 1e-3, an epoch being
``ceil(rows / batch_size)`` steps).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from metaad_dist.errors import ConfigError, DataError

Scorer = Callable[[np.ndarray], np.ndarray]
Anomalies = Union[np.ndarray, Mapping[str, np.ndarray]]

SCORE_BATCH = 65536  # rows per forward pass when scoring; memory only, results do not depend on it


def as_rows(x, name: str) -> np.ndarray:
    """A 2-D float32 array, or a DataError naming the argument."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array of rows x features, got shape {arr.shape}")
    return arr


def stack_anomalies(anomaly_x: Anomalies, n_features: int, required: bool = True) -> np.ndarray:
    """Labelled anomaly rows, stacked: a dict family -> rows (setup.sampler.budget_x) or an array."""
    if isinstance(anomaly_x, Mapping):
        parts = [as_rows(x, f"anomaly_x['{f}']") for f, x in anomaly_x.items() if len(x)]
        rows = np.concatenate(parts) if parts else np.zeros((0, n_features), np.float32)
    else:
        rows = as_rows(anomaly_x, "anomaly_x") if len(anomaly_x) else np.zeros((0, n_features), np.float32)
    if rows.shape[1] != n_features:
        raise DataError(f"anomaly_x has {rows.shape[1]} features but normal_x has {n_features}")
    if required and len(rows) == 0:
        raise DataError("anomaly_x is empty; this baseline needs labelled anomaly rows (data.meta families)")
    return rows


def positive(settings, *keys: str) -> None:
    for key in keys:
        if getattr(settings, key) <= 0:
            raise ConfigError(f"eval.{key}={getattr(settings, key)}; expected a positive number")


def check_net_settings(settings) -> None:
    positive(settings, "net_epochs", "net_batch_size", "net_lr")
    if settings.net_weight_decay < 0 or settings.net_max_steps_per_epoch < 0:
        raise ConfigError("eval.net_weight_decay and eval.net_max_steps_per_epoch must be >= 0")
    if any(int(h) <= 0 for h in settings.net_hidden_dims):
        raise ConfigError(f"eval.net_hidden_dims={list(settings.net_hidden_dims)}; expected positive layer widths")


def mlp_network(in_dim: int, hidden_dims: Sequence[int], out_dim: int, bias: bool) -> nn.Sequential:
    """Linear-ReLU hidden layers and a linear output layer."""
    layers: list[nn.Module] = []
    dims = [in_dim, *(int(h) for h in hidden_dims)]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], out_dim, bias=bias))
    return nn.Sequential(*layers)


def steps_per_epoch(n_rows: int, settings) -> int:
    steps = math.ceil(n_rows / settings.net_batch_size)
    cap = settings.net_max_steps_per_epoch
    return min(steps, cap) if cap > 0 else steps


def seeded(seed: int) -> np.random.Generator:
    """Seed torch (weight init) and return the numpy generator that draws every batch."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def balanced_batch(rng: np.random.Generator, n_normal: int, n_anomaly: int, batch_size: int):
    """Row indices of one mini-batch in which each row is an anomaly with probability 1/2.

    The same distribution as DeepOD's (and DevNet's) ``WeightedRandomSampler`` with weights
    1/n_class: few labelled anomalies are seen as often as the many normal rows.
    """
    is_anomaly = rng.random(batch_size) < 0.5
    k = int(is_anomaly.sum())
    return rng.integers(0, n_normal, batch_size - k), rng.integers(0, n_anomaly, k)


def adam(params, settings) -> torch.optim.Optimizer:
    # eps=1e-6 as in DeepOD's BaseDeepAD, the implementation behind the anchors.
    return torch.optim.Adam(params, lr=settings.net_lr, weight_decay=settings.net_weight_decay, eps=1e-6)


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, device: torch.device) -> np.ndarray:
    """Apply `fn` to rows of `x` in chunks and return float64 numpy scores."""
    x = as_rows(x, "x")
    out = [fn(torch.as_tensor(x[i:i + SCORE_BATCH], device=device)).double().cpu() for i in range(0, len(x), SCORE_BATCH)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def device_or_cpu(device: Optional[torch.device]) -> torch.device:
    return device if device is not None else torch.device("cpu")
