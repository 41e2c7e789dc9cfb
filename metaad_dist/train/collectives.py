"""Collectives of the Ray Train workers: gradients and statistics averaged over the process group.

Kept apart from the loop so that the learner's `grad_sync` / `stat_sync` hooks are plain
functions of tensors (torch.distributed), usable in any process group, Ray's or not.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

from metaad_dist.errors import ConfigError
from metaad_dist.meta.learner import MetaLearner
from metaad_dist.train import shared_memory_sum
from metaad_dist.train.shared_memory_sum import SharedMemorySum


COLLECTIVES = ("auto", "all_reduce", "all_gather", "shared_memory")


def resolve_collective(setting: str, backend: str) -> str:
    """trainer.grad_collective for this backend: `auto` all-reduces on NCCL; on gloo it sums
    through shared memory where it can (x86-64), else gathers."""
    if setting == "auto":
        if "nccl" in backend:
            return "all_reduce"
        return "shared_memory" if shared_memory_sum.supported() else "all_gather"
    return setting


def gradient_averager(setting: str, backend: str, params: list[torch.Tensor], world: int) -> "GradientAverager":
    """The GradientAverager of a worker of the default process group (a collective call: every
    worker calls it). `shared_memory` needs every worker on this machine; `auto` falls back to
    gloo's all_gather when they are not, an explicit setting is an error."""
    collective = resolve_collective(setting, backend)
    if collective != "shared_memory" or world < 2:
        return GradientAverager(collective)
    # Room for the parameters in float64 too: a log line gathers them with its metrics.
    shared = SharedMemorySum.open(8 * sum(p.numel() for p in params) + LOG_ROW_METRICS_ROOM)
    if shared is not None:
        return GradientAverager(collective, shared)
    if setting == "shared_memory":
        raise ConfigError("trainer.grad_collective=shared_memory; the workers could not share a segment (expected them "
                          "on one machine, with room in /dev/shm, in a segment of at most "
                          f"{shared_memory_sum.MAX_SEGMENT_BYTES >> 20} MiB): use auto, all_gather or all_reduce")
    return GradientAverager("all_gather")


def sum_over_workers(flat: torch.Tensor, collective: str = "all_reduce") -> torch.Tensor:
    """The elementwise sum of a 1-D tensor over workers, identical on every worker.

    `all_gather` gathers every worker's tensor and adds them in rank order: one round trip
    instead of gloo's reduce-scatter + all-gather rounds, which on small tensors cost about
    three times as much (benchmarks/README.md, "Gradient collective")."""
    return start_sum(flat, collective)()


def start_sum(flat: torch.Tensor, collective: str = "all_reduce",
              shared: Optional[SharedMemorySum] = None) -> Callable[[], torch.Tensor]:
    """`sum_over_workers` started asynchronously: returns the call that waits for the sum, so
    a worker can do other work while the collective (and the slowest worker) is in flight."""
    if shared is not None:
        return shared.start(flat)
    if collective == "all_gather":
        rows = start_gather_rows(flat)
        return lambda: rows().sum(dim=0)
    flat = flat.clone()
    work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
    return lambda: (work.wait(), flat)[1]


def gather_rows(flat: torch.Tensor) -> torch.Tensor:
    """Every worker's 1-D tensor, one row per rank (world x n), identical on every worker."""
    return start_gather_rows(flat)()


def start_gather_rows(flat: torch.Tensor) -> Callable[[], torch.Tensor]:
    """`gather_rows` started asynchronously: returns the call that waits for the rows."""
    world = dist.get_world_size()
    gathered = torch.empty(world * flat.numel(), dtype=flat.dtype, device=flat.device)
    work = dist.all_gather_single(gathered, flat, async_op=True)
    return lambda: (work.wait(), gathered.view(world, -1))[1]


class GradientAverager:
    """`grad_sync` for MetaLearner: sum gradients over workers, divide by the world size, in place.

    One flat buffer per call (a single collective instead of one per tensor): one level's
    gradients, or both levels' with `meta.update_order=simultaneous`; through `shared` (the
    workers' shared-memory segment) when they share a machine, else the process group. A parameter a loss does
    not use has no gradient on every worker, since all workers run the same code path, so the
    tensors line up. `seconds` accumulates the time spent here: waiting for the slowest worker
    plus the transfer, less the time `while_waiting` ran.

    `while_waiting`, when set, runs once while the next collective is in flight, then is
    cleared: work that does not depend on the update (the next step's episodes) fills the
    wait for the other workers instead of following it.
    """

    def __init__(self, collective: str = "all_reduce", shared: Optional[SharedMemorySum] = None):
        self.collective, self.shared = collective, shared
        self.seconds = 0.0
        self.while_waiting: Optional[Callable[[], None]] = None

    def __call__(self, grads: list[torch.Tensor]) -> None:
        started = time.perf_counter()
        if grads:
            finish = start_sum(torch.cat([g.reshape(-1) for g in grads]), self.collective, self.shared)
            if self.while_waiting is not None:
                work, self.while_waiting = self.while_waiting, None
                busy = time.perf_counter()
                work()
                started += time.perf_counter() - busy
            flat = finish()
            flat /= dist.get_world_size()
            offset = 0
            for g in grads:
                n = g.numel()
                g.copy_(flat[offset:offset + n].view_as(g))
                offset += n
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
            self.shared = None


def mean_over_workers_tensor(values: torch.Tensor) -> torch.Tensor:
    """The elementwise mean of `values` over workers (e.g. the curriculum's margins, which must agree)."""
    return sum_over_workers(values.reshape(-1)).view_as(values) / dist.get_world_size()


def mean_over_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(values)
    t = mean_over_workers_tensor(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, t.tolist()))


# Bytes of a log line's metrics (float64) that a shared-memory segment leaves room for.
LOG_ROW_METRICS_ROOM = 8 * 512
# Floats a log line may all-gather (world x parameters, float64: 32 MB) to get the parameter
# spread in the same collective as the metrics; a larger model or group takes two all-reduces
# (MAX, MIN) of its parameters instead, whose size does not grow with the number of workers.
LOG_GATHER_MAX_FLOATS = 1 << 22


def log_row_over_workers(values: dict[str, float], model: torch.nn.Module, device: torch.device,
                         shared: Optional[SharedMemorySum] = None) -> dict[str, float]:
    """The mean of `values` over workers and `param_spread`, the largest difference of any
    parameter between workers (0.0 when they are in sync). For small models one all-gather
    carries both: a log line waits for the other workers once, not three times (a mean, a max
    and a min; benchmarks/README.md, "Cheaper reports"); through `shared` (the gradient sum's
    segment) when it has the room."""
    keys = sorted(values)
    local = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(device, torch.float64)
    together = dist.get_world_size() * params.numel() <= LOG_GATHER_MAX_FLOATS
    payload = torch.cat([local, params]) if together else local
    rows = shared.gather(payload) if shared is not None and shared.fits(payload) else gather_rows(payload)
    if together:
        gathered = rows[:, len(keys):]
        param_spread = float((gathered.max(dim=0).values - gathered.min(dim=0).values).max())
    else:
        param_spread = spread(params)
    return {**dict(zip(keys, rows[:, :len(keys)].mean(dim=0).tolist())), "param_spread": param_spread}


def curriculum_spread(learner: MetaLearner, device: torch.device) -> float:
    """Largest difference of a curriculum margin between workers (0.0 when they are in sync)."""
    margins = learner.curriculum.margins
    return spread(torch.tensor([margins[f] for f in sorted(margins)], dtype=torch.float64, device=device))


def spread(flat: torch.Tensor) -> float:
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())
