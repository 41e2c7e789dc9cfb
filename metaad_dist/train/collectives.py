"""Collectives of the Ray Train workers: gradients and statistics averaged over the process group.

Kept apart from the loop so that the learner's `grad_sync` / `stat_sync` hooks are plain
functions of tensors (torch.distributed), usable in any process group, Ray's or not.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from metaad_dist.meta.learner import MetaLearner


class GradientAverager:
    """`grad_sync` for MetaLearner: all-reduce one level's gradients, divide by the world size.

    One flat buffer per call (a single collective instead of one per tensor). Parameters
    without a gradient (unused by this level's loss) have none on every worker, since all
    workers run the same code path, and stay None so the optimizer skips them. `seconds`
    accumulates the time spent here: waiting for the slowest worker plus the transfer.
    """

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        started = time.perf_counter()
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= dist.get_world_size()
            offset = 0
            for g in grads:
                n = g.numel()
                g.copy_(flat[offset:offset + n].view_as(g))
                offset += n
        self.seconds += time.perf_counter() - started


def mean_over_workers_tensor(values: torch.Tensor) -> torch.Tensor:
    """The elementwise mean of `values` over workers (e.g. the curriculum's margins, which must agree)."""
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def mean_over_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(values)
    t = mean_over_workers_tensor(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, t.tolist()))


def parameter_spread(model: torch.nn.Module) -> float:
    """Largest difference of any parameter between workers (0.0 when they are in sync)."""
    return spread(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))


def curriculum_spread(learner: MetaLearner, device: torch.device) -> float:
    """Largest difference of a curriculum margin between workers (0.0 when they are in sync)."""
    margins = learner.curriculum.margins
    return spread(torch.tensor([margins[f] for f in sorted(margins)], dtype=torch.float64, device=device))


def spread(flat: torch.Tensor) -> float:
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())
