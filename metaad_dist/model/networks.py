"""Encoder f_theta, optional decoder g_psi, head h_phi and bounded temperature (docs/method.md 3).

Pure PyTorch: no Ray, no config objects beyond plain arguments, so the same module runs in
one process, inside Ray Train workers and in the scikit-learn-style estimator.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from metaad_dist.model.layers import mlp
from metaad_dist.model.memory import NormalMemory


class BoundedTemperature(nn.Module):
    """T = exp(tau) with log T squashed into [log t_min, log t_max] by a sigmoid.

    A smooth bound keeps a gradient everywhere, unlike clamping at the edges.
    """

    def __init__(self, init: float, t_min: float, t_max: float):
        super().__init__()
        if not t_min < init < t_max or t_min <= 0:
            raise ValueError(f"temperature init {init} must lie strictly inside ({t_min}, {t_max})")
        self.log_min, self.log_max = math.log(t_min), math.log(t_max)
        frac = (math.log(init) - self.log_min) / (self.log_max - self.log_min)
        self.raw = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))

    def log_t(self) -> torch.Tensor:
        return self.log_min + (self.log_max - self.log_min) * torch.sigmoid(self.raw)

    def forward(self) -> torch.Tensor:
        return self.log_t().exp()


# What a background logit reading the input row sees (docs/method.md section 3): the scaled row,
# or its deviation |x| from the training normal rows' centre (0 after either scaler), which does
# not tell an anomaly that raises a feature from one that lowers it.
BACKGROUND_FEATURES = ("row", "deviation")


class PrototypeHead(nn.Module):
    """Distance-aware head: logits -||z - c_k||^2 for K prototypes plus a background logit.

    The background logit b + w.z is a (K+1)-th softmax entry that no normal row is assigned
    to; S(x) takes the max over the K normal entries only. Far from every prototype the
    background wins, so 1 - S(x) grows with distance to the normal manifold (a plain linear
    head extrapolates confidently instead), and the outer loop can tilt w towards what the
    anomaly shots share.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        background_init: float,
        background_hidden: Sequence[int] = (),
        background_in_dim: int = 0,
        background_features: str = "row",
    ):
        super().__init__()
        if background_features not in BACKGROUND_FEATURES:
            raise ValueError(f"background_features='{background_features}'; expected one of {BACKGROUND_FEATURES}")
        self.prototypes = nn.Parameter(torch.randn(num_classes, embed_dim))
        # The background logit reads the embedding, or (background_in_dim > 0) the input row
        # itself: features the normal-only encoder had no reason to keep stay visible to it.
        self.reads_input = background_in_dim > 0
        self.deviation = background_features == "deviation"
        self.background = mlp([background_in_dim or embed_dim, *background_hidden, 1])
        last = self.background[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, background_init)

    def forward(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if self.reads_input and x is None:
            raise ValueError("this head's background logit reads the input row: pass x")
        background = self.background((x.abs() if self.deviation else x) if self.reads_input else z)
        return torch.cat([-torch.cdist(z, self.prototypes).pow(2), background], dim=1)


class MetaADModel(nn.Module):
    """f (encoder), g (decoder, optional), h (head) and T; scores are 1 - max softmax or energy."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (128, 64),
        embed_dim: int = 32,
        dropout: float = 0.0,
        use_decoder: bool = False,
        temperature_init: float = 1.0,
        temperature_min: float = 0.3,
        temperature_max: float = 1.05,
        head: str = "prototype",
        background_init: float = -2.0,
        background_hidden: Sequence[int] = (),
        background_reads_input: bool = False,
        background_features: str = "row",  # what checkpoints written before the choice existed used
        memory_rows: int = 0,
        memory_k: int = 5,
        calibration_rows: int = 0,
        isolation_trees: int = 0,
        isolation_samples: int = 256,
        autoencoder_hidden: Sequence[int] = (),
        autoencoder_fit: Sequence[float] = (150, 1e-3, 128),
        odin_epsilon: float = 0.0,
        reconstruction: str = "autoencoder",  # what checkpoints written before the choice existed used
        pca_components: int = 32,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.odin_epsilon = odin_epsilon
        self.encoder = mlp([in_dim, *hidden_dims, embed_dim], dropout)
        self.decoder = mlp([embed_dim, *reversed(hidden_dims), in_dim]) if use_decoder else None
        if head == "prototype":
            self.head = PrototypeHead(
                embed_dim, num_classes, background_init, background_hidden, in_dim if background_reads_input else 0,
                background_features,
            )
        elif head == "linear":
            self.head = nn.Linear(embed_dim, num_classes)
        else:
            raise ValueError(f"unknown head '{head}'; expected 'prototype' or 'linear'")
        self.temperature = BoundedTemperature(temperature_init, temperature_min, temperature_max)
        # Filled after training (fill_memory); until then scores are the network's alone.
        self.memory = (
            NormalMemory(
                in_dim, memory_rows, memory_k, calibration_rows, isolation_trees, isolation_samples,
                autoencoder_hidden, autoencoder_fit, reconstruction, pca_components,
            )
            if memory_rows > 0 else None
        )

    def class_parameters(self) -> list[nn.Parameter]:
        """The head's per-class parameters: what the inner loop may also fit on normal rows."""
        if isinstance(self.head, PrototypeHead):
            return [self.head.prototypes]
        return list(self.head.parameters())

    def inner_parameters(self) -> list[nn.Parameter]:
        """theta (and psi): the representation shaped on normal rows."""
        params = list(self.encoder.parameters())
        if self.decoder is not None:
            params += list(self.decoder.parameters())
        return params

    def outer_parameters(self) -> list[nn.Parameter]:
        """phi and tau: the decision surface calibrated with anomaly shots."""
        return list(self.head.parameters()) + list(self.temperature.parameters())

    def logits(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Head logits / T from the embedding z (and the input x, which some heads also read)."""
        head = self.head(z, x) if isinstance(self.head, PrototypeHead) else self.head(z)
        return head / self.temperature()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encoder(x), x)

    def confidence_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """S = max over the K normal classes of the softmax (a background entry only dilutes it)."""
        return torch.softmax(logits, dim=1)[:, : self.num_classes].max(dim=1).values

    def confidence(self, x: torch.Tensor) -> torch.Tensor:
        return self.confidence_from_logits(self(x))

    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor, kind: str = "msp") -> torch.Tensor:
        """The network score, fused with the normal memory's one-class evidence once that is filled."""
        score = self.network_score(x, kind)
        if self.memory is not None and bool(self.memory.ready):
            return self.memory.fuse(score, x)
        return score

    @torch.no_grad()
    def fill_memory(self, normal_x: torch.Tensor, val_normal_x: torch.Tensor, kind: str, seed: int = 0) -> None:
        """Store training normal rows; calibrate every score part on validation normal rows."""
        if self.memory is not None:
            self.memory.fill(normal_x, val_normal_x, self.network_score(val_normal_x, kind), seed)

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        """ODIN (Liang, Li, Srikant, ICLR 2018): x + eps * sign(grad_x log S(x)).

        A small step towards higher confidence raises S more for rows near the normal manifold
        than for anomalies, which widens the gap the score ranks by. Identity when eps is 0.
        Gradients go to x only; parameter gradients are left untouched.
        """
        if self.odin_epsilon <= 0:
            return x
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            log_s = self.confidence(x).clamp_min(1e-12).log().sum()
            (grad,) = torch.autograd.grad(log_s, x)
        return (x + self.odin_epsilon * grad.sign()).detach()

    @torch.no_grad()
    def network_score(self, x: torch.Tensor, kind: str = "msp") -> torch.Tensor:
        logits = self(self.perturb(x))
        if kind == "msp":
            return 1.0 - self.confidence_from_logits(logits)
        if kind == "energy":
            return -self.temperature() * torch.logsumexp(logits[:, : self.num_classes], dim=1)
        raise ValueError(f"unknown score '{kind}'; expected 'msp' or 'energy'")
