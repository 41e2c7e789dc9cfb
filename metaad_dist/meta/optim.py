"""Optimizers for each level, built from OptimizerConfig."""
from __future__ import annotations

from typing import Iterable

import torch

from metaad_dist.config import OptimizerConfig
from metaad_dist.errors import ConfigError


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, key: str) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"{key}.name='{cfg.name}'; expected one of ['sgd', 'adam', 'adamw']")
