"""Layer builders shared by the meta-learner's networks and the normal memory's autoencoder."""
from __future__ import annotations

from typing import Sequence

from torch import nn


def mlp(dims: Sequence[int], dropout: float = 0.0, final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or final_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
