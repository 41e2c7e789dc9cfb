"""The first-order bi-level meta-learner, readable top to bottom (docs/method.md section 5).

For one episode:
  1. inner loop (`inner_steps` times): shape the encoder on the normal support rows;
  2. outer loop (`outer_steps` times): with the encoder frozen, calibrate head and temperature
     so that normal query rows are confident and the anomaly shots are not.
No gradient flows through the inner trajectory into the outer update (first-order; the
authors freeze the encoder in the outer loop), so no meta-learning library is needed.

Section 5's options, each off by default: ODIN input perturbation of the outer loop's rows
(`model.odin_epsilon`), PCGrad between the inner gradient and each family's outer gradient
(`meta.pcgrad`), and the hard-OOD curriculum (`meta.curriculum_families`).

`step` takes a batch of `meta.episodes_per_step` episodes: their rows are stacked so each level
costs one forward/backward and one optimizer step, and the loss is the mean of the per-episode
losses (every episode has the same row counts, so the row means of the inner loss and the BCE
terms are that mean already; the margin term is taken per episode). Its gradient is the mean
of the per-episode gradients, which is what makes W workers x E episodes per step equal one
process stepping on the same W x E episodes.

`grad_sync` is called between backward and step with the gradient tensors to average in place;
Ray Train workers pass an all-reduce so every worker keeps identical parameters. With
`meta.update_order=simultaneous` (the default) the last inner and the first outer update take
their gradients at the same parameters and share one collective (docs/method.md section 5).
`stat_sync` averages a tensor of statistics the same way (the curriculum's margins), so workers
also keep identical curricula. One process passes neither.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from metaad_dist.config import MetaConfig, plain
from metaad_dist.episodes.episode import Episode
from metaad_dist.errors import ConfigError
from metaad_dist.meta.curriculum import HardFamilyCurriculum
from metaad_dist.meta.losses import inner_loss, outer_loss
from metaad_dist.meta.optim import make_optimizer
from metaad_dist.meta.pcgrad import assign_flat_grad, flat_grad, project_conflicting
from metaad_dist.meta.synthetic import check_synthetic, synthetic_anomalies
from metaad_dist.model.networks import MetaADModel

GradSync = Callable[[list[torch.Tensor]], None]
UPDATE_ORDERS = ("sequential", "simultaneous")
StatSync = Callable[[torch.Tensor], torch.Tensor]


def check_update_order(cfg: MetaConfig) -> None:
    if cfg.update_order not in UPDATE_ORDERS:
        raise ConfigError(f"meta.update_order='{cfg.update_order}'; expected one of {', '.join(UPDATE_ORDERS)}")
    if cfg.update_order == "simultaneous" and cfg.pcgrad:
        raise ConfigError("meta.pcgrad=true needs meta.update_order=sequential (PCGrad projects against the inner "
                          "gradient at the outer step's parameters)")


def check_episodes_per_step(cfg: MetaConfig) -> None:
    """PCGrad and the curriculum work per episode (per-family gradients, margins observed in
    episode order): they are defined for one episode per step only."""
    e = cfg.episodes_per_step
    if e < 1:
        raise ConfigError(f"meta.episodes_per_step={e}; expected an integer >= 1")
    if e > 1 and cfg.pcgrad:
        raise ConfigError(f"meta.episodes_per_step={e} with meta.pcgrad=true; PCGrad works per episode: use 1")
    if e > 1 and cfg.curriculum_families > 0:
        raise ConfigError(
            f"meta.episodes_per_step={e} with meta.curriculum_families={cfg.curriculum_families}; "
            "the curriculum works per episode: use 1"
        )


def check_meta(cfg: MetaConfig) -> None:
    """Every meta.* setting the learner checks, as one-line ConfigErrors (also run by the Ray driver)."""
    check_episodes_per_step(cfg)
    check_update_order(cfg)
    check_synthetic(cfg.synthetic_shots, cfg.synthetic_fraction, cfg.synthetic_scale)


def step_episodes(step: int, per_step: int, world: int = 1, rank: int = 0) -> range:
    """Episode indices worker `rank` of `world` trains at optimizer step `step`, `per_step` each.

    Step s covers episodes s*W*E .. (s+1)*W*E - 1 whatever W and E are (so W workers x E equal
    one process with W*E), and each worker takes every W-th of them (the stride its sampler
    prefetches by)."""
    first = step * world * per_step
    return range(first + rank, first + world * per_step, world)


def metrics_as_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """One device-to-host copy for all metrics (one sync on a GPU, not one per metric)."""
    if not metrics:
        return {}
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()) for v in metrics.values()]).tolist()
    return dict(zip(metrics, values))


def stacked(episodes: Sequence[Episode], key: str) -> np.ndarray:
    """One array of every episode's `key` rows; the episodes must have equal row counts."""
    parts = [getattr(e, key) for e in episodes]
    if len({len(p) for p in parts}) > 1:
        raise ValueError(f"episodes of one step have different {key} row counts {[len(p) for p in parts]}")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class MetaLearner:
    def __init__(
        self,
        model: MetaADModel,
        cfg: MetaConfig,
        device: torch.device,
        grad_sync: Optional[GradSync] = None,
        seed: int = 0,
        stat_sync: Optional[StatSync] = None,
    ):
        check_meta(cfg)
        self.model = model.to(device)
        self.seed = seed
        self.cfg = plain(cfg)
        self.device = device
        self.grad_sync = grad_sync
        self.stat_sync = stat_sync
        self.curriculum = (
            HardFamilyCurriculum(cfg.curriculum_families, cfg.curriculum_temperature, cfg.curriculum_momentum, seed)
            if cfg.curriculum_families > 0 else None
        )
        self.inner_params = model.inner_parameters()
        if cfg.inner_updates_head:
            self.inner_params += model.class_parameters()
        self.outer_params = model.outer_parameters()
        self.inner_opt = make_optimizer(self.inner_params, cfg.inner_optimizer, "meta.inner_optimizer")
        self.outer_opt = make_optimizer(self.outer_params, cfg.outer_optimizer, "meta.outer_optimizer")

    def _tensor(self, a, dtype=torch.float32) -> torch.Tensor:
        if getattr(getattr(a, "flags", None), "writeable", True):
            return torch.as_tensor(a, dtype=dtype, device=self.device)
        # Episodes from Ray's object store are read-only views. The learner never writes to its
        # inputs, so it shares them as they are, without torch's warning about it in every worker.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.as_tensor(a, dtype=dtype, device=self.device)

    def _apply(self, loss: torch.Tensor, params: list, opt: torch.optim.Optimizer, clip: float) -> None:
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        self._step(params, opt, clip)

    def _step(self, params: list, opt: torch.optim.Optimizer, clip: float, synced: bool = False) -> None:
        if self.grad_sync is not None and not synced:
            self.grad_sync([p.grad for p in params if p.grad is not None])
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    def inner_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        loss, metrics = inner_loss(self.model, x, y, self.cfg)
        self._apply(loss, self.inner_params, self.inner_opt, self.cfg.inner_optimizer.grad_clip)
        return metrics

    def _outer_inputs(self, query_x: torch.Tensor, shots_x: torch.Tensor) -> tuple:
        """The outer loop's rows after ODIN (identity at eps 0) and their features, with the
        encoder frozen: the first-order cut."""
        query_x, shots_x = self.model.perturb(query_x), self.model.perturb(shots_x)
        with torch.no_grad():
            return query_x, shots_x, self.model.encoder(query_x), self.model.encoder(shots_x)

    def outer_step(
        self,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        shots_x: torch.Tensor,
        shots_family: Optional[torch.Tensor] = None,
        support: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        episodes: int = 1,
    ) -> dict:
        """One update of head and temperature; with `meta.pcgrad`, per family with gradient surgery
        against the inner loss on `support` (which it then needs, with `shots_family`).
        `episodes`: how many equal-sized episodes the rows stack (the margin is per episode)."""
        query_x, shots_x, z_query, z_shots = self._outer_inputs(query_x, shots_x)
        clip = self.cfg.outer_optimizer.grad_clip
        if not self.cfg.pcgrad:
            loss, metrics = outer_loss(
                self.model, z_query, query_y, z_shots, self.cfg, query_x, shots_x, episodes=episodes
            )
            self._apply(loss, self.outer_params, self.outer_opt, clip)
            return metrics
        if support is None or shots_family is None:
            raise ValueError("meta.pcgrad needs the support rows and each shot's family")
        inner, _ = inner_loss(self.model, *support, self.cfg)
        reference = flat_grad(inner, self.outer_params)
        grads, per_family = [], []
        for j in torch.unique(shots_family):
            rows = shots_family == j
            loss, metrics = outer_loss(self.model, z_query, query_y, z_shots[rows], self.cfg, query_x, shots_x[rows])
            grad = flat_grad(loss, self.outer_params)
            metrics["pcgrad_conflicts"] = (torch.dot(grad, reference) < 0).float()
            grads.append(project_conflicting(grad, reference))
            per_family.append(metrics)
        self.model.zero_grad(set_to_none=True)
        assign_flat_grad(self.outer_params, torch.stack(grads).mean(dim=0))
        self._step(self.outer_params, self.outer_opt, clip)
        # per-family metrics averaged; pcgrad_conflicts is the share of families projected
        return {k: torch.stack([m[k] for m in per_family]).mean() for k in per_family[0]}

    def joint_step(self, support: tuple, outer_rows: tuple, episodes: int) -> dict:
        """`meta.update_order=simultaneous`: the last inner update and the first outer update take
        their gradients at the same parameters, averaged over workers in one collective, then
        each optimizer steps. In the sequential order the outer gradient sees the encoder after
        that inner update; here it sees it one inner step (lr 1e-3) earlier. A worker waits for
        the others once per step instead of twice (benchmarks/README.md, trainer.py)."""
        self.model.zero_grad(set_to_none=True)
        loss, metrics = inner_loss(self.model, *support, self.cfg)
        inner_grads = torch.autograd.grad(loss, self.inner_params, allow_unused=True)
        query_x, query_y, shots_x = outer_rows
        query_x, shots_x, z_query, z_shots = self._outer_inputs(query_x, shots_x)
        loss, outer_metrics = outer_loss(
            self.model, z_query, query_y, z_shots, self.cfg, query_x, shots_x, episodes=episodes
        )
        metrics.update(outer_metrics)
        outer_grads = torch.autograd.grad(loss, self.outer_params, allow_unused=True)
        if self.grad_sync is not None:
            self.grad_sync([g for g in (*inner_grads, *outer_grads) if g is not None])
        for params, grads, opt, clip in (
            (self.inner_params, inner_grads, self.inner_opt, self.cfg.inner_optimizer.grad_clip),
            (self.outer_params, outer_grads, self.outer_opt, self.cfg.outer_optimizer.grad_clip),
        ):
            for p, g in zip(params, grads):
                p.grad = g
            self._step(params, opt, clip, synced=True)
        return metrics

    @torch.no_grad()
    def family_margins(self, query_x: torch.Tensor, shots_x: torch.Tensor, shots_family: torch.Tensor) -> torch.Tensor:
        """mean S(query) - mean S(shots of family j), for each family index j of the episode."""
        s_q = self.model.confidence(self.model.perturb(query_x)).mean()
        s_s = self.model.confidence(self.model.perturb(shots_x))
        count = int(shots_family.max()) + 1
        sums = torch.zeros(count, device=s_s.device).index_add_(0, shots_family, s_s)
        counts = torch.bincount(shots_family, minlength=count).clamp_min(1)
        return s_q - sums / counts

    def curriculum_rows(self, episode: Episode, query_x: torch.Tensor, shots_x: torch.Tensor, shots_family: torch.Tensor):
        """Update the margins with this episode and keep only the shots of the families it picks."""
        margins = self.family_margins(query_x, shots_x, shots_family)
        if self.stat_sync is not None:
            margins = self.stat_sync(margins)
        self.curriculum.observe({f: float(m) for f, m in zip(episode.meta_families, margins)})
        picked = self.curriculum.choose(list(episode.meta_families), episode.index)
        keep = torch.as_tensor(
            [episode.meta_families.index(f) for f in picked], dtype=shots_family.dtype, device=shots_family.device
        )
        rows = torch.isin(shots_family, keep)
        return shots_x[rows], shots_family[rows]

    def step(self, episodes: Union[Episode, Sequence[Episode]], outer: bool = True) -> dict[str, float]:
        """One step on one episode or a batch of them (`step_tensors`), metrics as floats."""
        return metrics_as_floats(self.step_tensors(episodes, outer))

    def step_tensors(self, episodes: Union[Episode, Sequence[Episode]], outer: bool = True) -> dict[str, torch.Tensor]:
        """Inner loop on the support rows, then (unless ablated) the outer loop, each update on
        the mean loss of the batch. Metrics stay tensors on the device (no sync per step)."""
        episodes = [episodes] if isinstance(episodes, Episode) else list(episodes)
        n = len(episodes)
        self.model.train()
        sx, sy = self._tensor(stacked(episodes, "support_x")), self._tensor(stacked(episodes, "support_y"), torch.long)
        outer_steps = self.cfg.outer_steps if outer else 0
        # simultaneous: the last inner and the first outer update share one step (joint_step)
        joint = int(self.cfg.update_order == "simultaneous" and self.cfg.inner_steps > 0 and outer_steps > 0)
        metrics: dict = {}
        for _ in range(self.cfg.inner_steps - joint):
            metrics.update(self.inner_step(sx, sy))
        if outer_steps > 0:
            qx, qy, shots, family = self._outer_rows(episodes)
            if joint:
                metrics.update(self.joint_step((sx, sy), (qx, qy, shots), n))
            for _ in range(outer_steps - joint):
                metrics.update(self.outer_step(qx, qy, shots, family, (sx, sy), episodes=n))
        return metrics

    def _outer_rows(self, episodes: list[Episode]) -> tuple:
        """Query rows, their labels, the shots (the curriculum's pick) and each shot's family."""
        qx, qy = self._tensor(stacked(episodes, "query_x")), self._tensor(stacked(episodes, "query_y"), torch.long)
        shots = self._tensor(stacked(episodes, "shots_x"))
        family = self._tensor(stacked(episodes, "shots_family"), torch.long)
        if self.curriculum is not None:  # one episode per step (check_episodes_per_step)
            shots, family = self.curriculum_rows(episodes[0], qx, shots, family)
        if self.cfg.synthetic_shots > 0:
            shots, family = self._with_synthetic(episodes, shots, family)
        return qx, qy, shots, family

    def _with_synthetic(self, episodes: list[Episode], shots: torch.Tensor, family: torch.Tensor) -> tuple:
        """Each episode's shots followed by its synthetic anomalies (family index: one past its
        meta families), episode by episode so the margin stays per episode. Drawn from the
        episode's support rows, keyed by (seed, episode index): the same rows on any worker."""
        c = self.cfg
        n = len(episodes)
        synthetic = self._tensor(np.stack([
            synthetic_anomalies(e.support_x, c.synthetic_shots, c.synthetic_fraction, c.synthetic_scale,
                                (self.seed, e.index)) for e in episodes]))
        index = torch.full((n, c.synthetic_shots), len(episodes[0].meta_families), dtype=family.dtype, device=family.device)
        shots = torch.cat([shots.view(n, -1, shots.shape[-1]), synthetic], dim=1).view(-1, shots.shape[-1])
        return shots, torch.cat([family.view(n, -1), index], dim=1).view(-1)

    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "inner_opt": self.inner_opt.state_dict(),
            "outer_opt": self.outer_opt.state_dict(),
        }
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        # Dropout draws from torch's generator: a resumed run must continue its stream, not the
        # stream of a freshly seeded process.
        state["torch_rng"] = torch.get_rng_state()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.inner_opt.load_state_dict(state["inner_opt"])
        self.outer_opt.load_state_dict(state["outer_opt"])
        if self.curriculum is not None:
            self.curriculum.load_state_dict(state.get("curriculum", {"margins": {}}))
        if "torch_rng" in state:  # checkpoints from before it was saved resume without it
            torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
