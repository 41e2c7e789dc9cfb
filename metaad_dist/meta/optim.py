"""Optimizers for each level, built from OptimizerConfig."""
from __future__ import annotations

from typing import Iterable

import torch

from metaad_dist.config import OptimizerConfig
from metaad_dist.errors import ConfigError


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, key: str) -> torch.optim.Optimizer:
    """foreach: one multi-tensor kernel per update op instead of a Python loop over the
    parameters. torch uses it by default on CUDA only; on CPU it gives the same weights, bit for
    bit, and halves the optimizer's share of a small-MLP episode step (issue 19)."""
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    raise ConfigError(f"{key}.name='{cfg.name}'; expected one of ['sgd', 'adam', 'adamw']")
