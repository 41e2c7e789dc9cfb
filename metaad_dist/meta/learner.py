"""The first-order bi-level meta-learner, readable top to bottom (METHOD.md section 5).

For one episode:
  1. inner loop (`inner_steps` times): shape the encoder on the normal support rows;
  2. outer loop (`outer_steps` times): with the encoder frozen, calibrate head and temperature
     so that normal query rows are confident and the anomaly shots are not.
No gradient flows through the inner trajectory into the outer update (first-order; the
authors freeze the encoder in the outer loop), so no meta-learning library is needed.

`grad_sync` is called between backward and step; Ray Train workers pass an all-reduce that
averages gradients so every worker keeps identical parameters. One process passes nothing.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from metaad_dist.config import MetaConfig
from metaad_dist.episodes.episode import Episode
from metaad_dist.meta.losses import inner_loss, outer_loss
from metaad_dist.meta.optim import make_optimizer
from metaad_dist.model.networks import MetaADModel

GradSync = Callable[[list[torch.nn.Parameter]], None]


class MetaLearner:
    def __init__(
        self,
        model: MetaADModel,
        cfg: MetaConfig,
        device: torch.device,
        grad_sync: Optional[GradSync] = None,
    ):
        self.model = model.to(device)
        self.cfg = cfg
        self.device = device
        self.grad_sync = grad_sync
        self.inner_params = model.inner_parameters()
        if cfg.inner_updates_head:
            self.inner_params += model.class_parameters()
        self.outer_params = model.outer_parameters()
        self.inner_opt = make_optimizer(self.inner_params, cfg.inner_optimizer, "meta.inner_optimizer")
        self.outer_opt = make_optimizer(self.outer_params, cfg.outer_optimizer, "meta.outer_optimizer")

    def _tensor(self, a, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype, device=self.device)

    def _apply(self, loss: torch.Tensor, params: list, opt: torch.optim.Optimizer, clip: float) -> None:
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_sync is not None:
            self.grad_sync(params)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    def inner_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        loss, metrics = inner_loss(self.model, x, y, self.cfg)
        self._apply(loss, self.inner_params, self.inner_opt, self.cfg.inner_optimizer.grad_clip)
        return metrics

    def outer_step(self, query_x: torch.Tensor, query_y: torch.Tensor, shots_x: torch.Tensor) -> dict:
        with torch.no_grad():  # encoder frozen: the first-order cut
            z_query, z_shots = self.model.encoder(query_x), self.model.encoder(shots_x)
        loss, metrics = outer_loss(self.model, z_query, query_y, z_shots, self.cfg, query_x, shots_x)
        self._apply(loss, self.outer_params, self.outer_opt, self.cfg.outer_optimizer.grad_clip)
        return metrics

    def step(self, episode: Episode, outer: bool = True) -> dict[str, float]:
        """One episode: inner loop on the support rows, then (unless ablated) the outer loop."""
        self.model.train()
        sx, sy = self._tensor(episode.support_x), self._tensor(episode.support_y, torch.long)
        metrics: dict = {}
        for _ in range(self.cfg.inner_steps):
            metrics.update(self.inner_step(sx, sy))
        if outer and self.cfg.outer_steps > 0:
            qx, qy = self._tensor(episode.query_x), self._tensor(episode.query_y, torch.long)
            shots = self._tensor(episode.shots_x)
            for _ in range(self.cfg.outer_steps):
                metrics.update(self.outer_step(qx, qy, shots))
        return {k: float(v) for k, v in metrics.items()}

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "inner_opt": self.inner_opt.state_dict(),
            "outer_opt": self.outer_opt.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.inner_opt.load_state_dict(state["inner_opt"])
        self.outer_opt.load_state_dict(state["outer_opt"])
