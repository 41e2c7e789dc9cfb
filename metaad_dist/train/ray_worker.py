"""The loop each Ray Train worker runs (`train_worker`): episodes, inner/outer steps with averaged
gradients, reports and checkpoints, then its share of the fusion folds.

Test hook: ``METAAD_FAULT_AFTER_EPISODES=<n>:<marker file>`` in the driver's environment makes
the last worker exit abruptly (``os._exit``) once ``n`` episodes are done, unless the marker
exists; it creates the marker first, so only the first attempt dies.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from metaad_dist.config import Config
from metaad_dist.data.source import open_source
from metaad_dist.episodes.episode import Episode
from metaad_dist.errors import ConfigError
from metaad_dist.meta.learner import MetaLearner, metrics_as_floats, step_episodes
from metaad_dist.train.artifacts import TrainedModel
from metaad_dist.train.background_reports import BackgroundReports
from metaad_dist.train.checkpoint import (
    checkpoint_dir_name,
    checkpoint_uri,
    load_checkpoint,
    restore,
    sampler_state,
    save_checkpoint,
)
from metaad_dist.train.collectives import (
    curriculum_spread,
    gradient_averager,
    log_row_over_workers,
    mean_over_workers,
    mean_over_workers_tensor,
)
from metaad_dist.train.commands import run_location, save_trained_run
from metaad_dist.train.draw_ahead import DrawAhead
from metaad_dist.train.fusion import choose_fusion, fold_network, fold_plan
from metaad_dist.train.local import crossed, fit_network_only, validation_auroc
from metaad_dist.train.setup import configure_torch, prepare_training

BACKENDS = ("auto", "gloo", "nccl")
FAULT_ENV = "METAAD_FAULT_AFTER_EPISODES"
FOLD_QUEUE_KEY = "metaad/fusion/next_fold"  # fold_queue's counter in the process group's store
SHOWN = ("inner_loss", "outer_loss", "confidence_margin", "temperature", "val_auroc", "episodes_per_s")


class EpisodeSource(Protocol):
    """What the worker loop needs from a sampler; `state_dict`/`load_state_dict` are optional."""

    def episode(self, index: int) -> Episode: ...


def open_episode_source(setup, num_workers: int, pool=None) -> EpisodeSource:
    """The in-memory EpisodeSampler of this worker's setup, or the job's shared SamplerPool.

    The pool's actors were started once by the driver (`shared_streaming_setup`); every worker
    asks them for its own episodes (actor `index % num_actors` builds episode `index`), so reads
    and buffers do not grow with the number of workers.
    """
    if pool is None:
        # A pure function of (seed, index): its whole state is the episode counter.
        return setup.sampler
    pool.expect_stride(num_workers)  # this worker takes every num_workers-th episode
    return pool


def total_steps(episodes: int, per_step: int) -> int:
    """Optimizer steps for `episodes` when each step trains `per_step` (W x E) of them."""
    return math.ceil(episodes / per_step)


@dataclass
class Window:
    """Throughput, sampler wait and gradient all-reduce time since the last report (this worker)."""

    sync_start: float = 0.0  # GradientAverager.seconds when the window opened
    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    wait: float = 0.0

    def close(self, per_step: int, sync_seconds: float) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {
            "episodes_per_s": self.steps * per_step / elapsed,
            "sampler_wait_s": self.wait,
            "sampler_wait_fraction": self.wait / elapsed,
            "allreduce_fraction": (sync_seconds - self.sync_start) / elapsed,
        }


def fault_plan(spec: Optional[str]) -> Optional[tuple[int, str]]:
    if not spec:
        return None
    episodes, _, marker = spec.partition(":")
    if not episodes.isdigit() or not marker:
        raise ConfigError(f"{FAULT_ENV}='{spec}'; expected <episodes>:<marker file>")
    return int(episodes), marker


def worker_config(raw: dict):
    cfg = OmegaConf.merge(OmegaConf.structured(Config), raw)
    OmegaConf.set_struct(cfg, True)
    return cfg


def train_worker(config: dict) -> None:
    """`train_loop_per_worker`: runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    entered = time.perf_counter()
    config["aws"].install()  # the driver's keys, kept out of the logged runtime env
    cfg = worker_config(config["cfg"])
    t = cfg.trainer
    quiet_report_log()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    configure_torch(t)  # torch threads per worker
    device = ray.train.torch.get_device() if t.use_gpu else torch.device("cpu")
    shared, pool = config.get("setup"), config.get("pool")
    # Streaming: the driver's bounded setup, with this worker's own handle on the dataset.
    setup = shared.with_source(open_source(cfg.data, cfg.storage)) if shared is not None else prepare_training(cfg)
    learner = MetaLearner(setup.build_model(cfg.seed), cfg.meta, device, seed=cfg.seed,
                          stat_sync=mean_over_workers_tensor if world > 1 else None)
    # Both levels' gradients may go in one sum: the segment of a shared-memory sum holds them all.
    averager = gradient_averager(t.grad_collective, backend(cfg), learner.inner_params + learner.outer_params, world)
    learner.grad_sync = averager if world > 1 else None
    source = open_episode_source(setup, world, pool)
    per_worker = cfg.meta.episodes_per_step
    per_step = world * per_worker  # episodes of all workers in one optimizer step
    steps = total_steps(cfg.meta.episodes, per_step)

    def draw(s: int) -> list[Episode]:
        return [source.episode(i) for i in step_episodes(s, per_worker, world, rank)]

    step, history, seconds_before = 0, [], 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        step, history, seconds_before = restore(state, learner, source, cfg, world, steps, checkpoint_uri(checkpoint))
        say(cfg, rank, f"[ray] resuming from {checkpoint_uri(checkpoint)} at episode {state['episodes_done']}")
    first_step = step
    fault = fault_plan(config.get("fault"))
    report_validations = config.get("report_validations", True)

    config_yaml = OmegaConf.to_yaml(cfg)  # for every checkpoint; once, since a call costs ~15 ms
    if world > 1:
        # Workers finish their setup at different times; the first gradient collective would
        # absorb the skew into the loop's seconds. Waiting here counts it as setup (setup_s).
        dist.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    window, totals = Window(), {"sampler_wait_s": 0.0, "report_s": 0.0}
    # Episodes of the shared sampler actors are fetched a step ahead on a thread, which mostly
    # waits in ray.get: the actors' latency hides behind this step. The in-memory sampler is
    # CPU work in this process: drawn on a thread it ran beside the step's kernels, and a worker
    # took 4.0-4.7 ms of CPU per episode instead of 3.0-3.4 (1 worker, digits, 2 cores, A/B in
    # benchmarks/README.md), so it is drawn in the loop, as the plain loop does.
    # With 2+ workers it is drawn during the previous step's gradient collective (DrawAhead),
    # while this worker's core would idle waiting for the others.
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="metaad-episodes") if pool is not None else None
    pending = prefetch.submit(draw, step) if prefetch is not None and step < steps else None
    ahead = DrawAhead(draw, averager) if prefetch is None and world > 1 else None
    reports = BackgroundReports(ray.train.report)
    for s in range(step, steps):
        waiting = time.perf_counter()
        episodes = pending.result() if prefetch is not None else ahead.episodes(s, steps) if ahead else draw(s)
        waited = time.perf_counter() - waiting
        if prefetch is not None and s + 1 < steps:  # the next step's episodes come while this step trains
            pending = prefetch.submit(draw, s + 1)
        window.wait += waited
        totals["sampler_wait_s"] += waited
        before, done = s * per_step, (s + 1) * per_step
        metrics = learner.step_tensors(episodes, outer=before >= cfg.meta.warmup_episodes)
        window.steps += 1
        if fault and rank == world - 1 and done >= fault[0] and not os.path.exists(fault[1]):
            open(fault[1], "w").close()
            os._exit(1)  # an abrupt death, as a killed process: no cleanup, no report
        last = s + 1 == steps
        validate = last or crossed(before, done, t.validate_every)
        save = last or crossed(before, done, t.checkpoint_every)
        if not (validate or save or crossed(before, done, t.log_every)):
            continue

        # Every worker reaches this point at the same steps: the collectives below are barriers.
        reporting = time.perf_counter()
        row = {**metrics_as_floats(metrics), **window.close(per_step, averager.seconds)}
        if world > 1:
            row = log_row_over_workers(row, learner.model, device, averager.shared)
            if learner.curriculum is not None and learner.curriculum.margins:
                row["curriculum_spread"] = curriculum_spread(learner, device)
        row.update(episode=done, step=s + 1)
        if validate and rank == 0:
            auroc = validation_auroc(learner.model, setup, cfg.model.score, device)
            if auroc is not None:
                row["val_auroc"] = auroc
        history.append(row)
        say(cfg, rank, f"[ray x{world}] episode {done}/{steps * per_step} " + " ".join(
            f"{k} {row[k]:.3f}" for k in SHOWN if k in row
        ))
        ckpt = None
        if save and rank == 0:
            ckpt = save_checkpoint({
                "learner": learner.state_dict(),
                "step": s + 1,
                "episodes_done": done,
                "num_workers": world,
                "sampler": sampler_state(cfg, source, done),
                "history": history,
                "seconds": seconds_before + time.perf_counter() - start,
                "config": config_yaml,
            })
        if save or (validate and report_validations):
            # Only checkpoints, and validations when Tune listens (its trials report at
            # validations), go through Ray Train: the rest is printed and kept in the history
            # (metrics.json), since each report is a barrier of every worker with the driver,
            # costing several ms.
            # On the report thread: the barrier and upload overlap the next steps (background_reports).
            reports.submit(
                row,
                checkpoint=ckpt,
                checkpoint_dir_name=checkpoint_dir_name(done) if save else None,
                delete_local_checkpoint_after_upload=ckpt is not None,
            )
            if fault:  # the test hook dies at an exact episode: its checkpoints before it must count
                reports.wait()
        totals["report_s"] += time.perf_counter() - reporting
        window = Window(averager.seconds)
    if prefetch is not None:
        prefetch.shutdown()  # the shared pool's actors belong to the driver, which stops them
    averager.close()

    totals.update(loop_s=time.perf_counter() - start, cpu_s=time.process_time() - cpu_start, allreduce_s=averager.seconds,
                  setup_s=start - entered, drawn_ahead_s=ahead.hidden_seconds if ahead else 0.0)
    if world > 1:
        totals = mean_over_workers(totals, device)
    learner.model.eval()
    fusion = finish_in_parallel(cfg, setup, learner.model, rank, world, lambda line: say(cfg, rank, line))
    reports.close()  # the last checkpoint's report went on beside the fusion folds
    if rank == 0:
        trained = TrainedModel(learner.model.cpu(), setup.scaler, setup.view.feature_names, cfg.model.score)
        summary = loop_summary(cfg, world, steps, first_step, totals, averager.collective)
        # waiting for a previous report, in the loop and after the folds (rank 0)
        summary["trainer"]["report_wait_seconds"] = reports.waited_s
        summary["trainer"]["fusion"] = fusion
        save_trained_run(cfg, run_location(cfg), trained, setup, history, seconds_before + totals["loop_s"], summary)


def finish_in_parallel(cfg, setup, model, rank: int, world: int, log) -> dict:
    """The fusion choice's fold networks spread over the workers. The fold networks (each trained at
    W*E episodes per step like the run itself) are a shared queue (`fold_queue`): every worker
    takes the next untrained fold until none is left, rank 0 only once it has filled the
    normal memory (on UNSW-NB15 as long as three or four folds), so no worker idles while
    another works. Rank 0 then gathers the fold networks and chooses the weights; which worker
    trained a fold does not change its network (seeded by its family). Every worker calls it
    (the gather is a barrier). Returns, for metrics.json, the folds each worker trained and the
    seconds each part took."""
    started = time.perf_counter()
    fold_cfg = OmegaConf.merge(cfg, {"meta": {"episodes_per_step": world * cfg.meta.episodes_per_step}})
    families = fold_plan(fold_cfg, setup, fit_network_only)
    memory_s = 0.0
    if rank == 0:
        setup.finish_model(model, cfg.model.score, cfg.seed)
        memory_s = time.perf_counter() - started
    folds_started = time.perf_counter()
    mine = {families[i]: fold_network(fold_cfg, setup, families[i], fit_network_only).cpu()
            for i in fold_queue(len(families), world)}
    report = {"rank": rank, "folds": list(mine), "fold_seconds": time.perf_counter() - folds_started, "memory_seconds": memory_s}
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (report, mine))
    else:
        gathered = [(report, mine)]
    if rank == 0:
        networks = {f: n for _, nets in gathered for f, n in nets.items()}
        choose_fusion(fold_cfg, setup, model, {f: networks[f] for f in families}, log)
    reports = [r for r, _ in gathered]
    return {
        "folds_by_worker": [r["folds"] for r in reports],
        "fold_seconds_by_worker": [r["fold_seconds"] for r in reports],
        "memory_seconds": memory_s,
        "seconds": time.perf_counter() - started,
    }


def fold_queue(folds: int, world: int):
    """Indices 0..folds-1, each handed to exactly one of the `world` workers calling this, in
    the order they ask: an atomic counter in the process group's key-value store (the
    TCPStore torch.distributed rendezvoused through; a fresh one for each worker group Ray
    starts, so a restarted group counts from 0 again)."""
    if world == 1:
        yield from range(folds)
        return
    store = dist.distributed_c10d._get_default_store()
    while (index := store.add(FOLD_QUEUE_KEY, 1) - 1) < folds:
        yield index


def quiet_report_log() -> None:
    """Ray 2.60 logs each report's metrics at INFO under a logger named after its source file,
    which LoggingConfig (it filters "ray.train.*") misses; the workers print progress instead."""
    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except (ImportError, AttributeError):
        pass


def say(cfg, rank: int, line: str) -> None:
    if rank == 0 and not cfg.quiet:
        # sys.__stdout__: Ray Train's patched print would also log the line, showing it twice.
        print(line, file=sys.__stdout__, flush=True)


def loop_summary(cfg, world: int, steps: int, first_step: int, totals: dict, collective: str) -> dict:
    """metrics.json "episodes" (trained) and "trainer": this attempt's loop (reports, validation, checkpoints included)."""
    per_step = world * cfg.meta.episodes_per_step
    trained = (steps - first_step) * per_step
    loop = totals["loop_s"]
    share = (lambda key: totals[key] / loop) if trained else (lambda key: None)
    return {
        # W workers train W x E episodes per step, so meta.episodes rounds up to a multiple of W x E.
        "episodes": steps * per_step,
        "trainer": {
            "name": "ray",
            "num_workers": world,
            "episodes_per_step": per_step,
            "backend": backend(cfg),
            # How gradients were summed: trainer.grad_collective as resolved on these workers.
            "grad_collective": collective if world > 1 else None,
            "episodes_trained": trained,  # by this attempt; metrics["episodes"] is the run's total
            "resumed_at_episode": first_step * per_step,
            "loop_seconds": loop,
            "worker_setup_seconds": totals.get("setup_s"),  # entering the loop function to the first episode
            # CPU time of the worker processes (all their threads) per episode: insensitive to other load.
            "cpu_ms_per_episode": 1000 * totals["cpu_s"] * world / trained if trained else None,
            "loop_episodes_per_s": trained / loop if trained else None,
            "sampler_wait_fraction": share("sampler_wait_s"),
            # Gradient all-reduces, waiting for the slowest worker included.
            "allreduce_fraction": share("allreduce_s"),
            # Drawing the next step's episodes inside the collective's wait (DrawAhead; in neither share above).
            "drawn_ahead_fraction": share("drawn_ahead_s"),
            # Reports with their validation and checkpoint writes.
            "report_fraction": share("report_s"),
            "worker_niceness": os.nice(0),  # as started by Ray (trainer.worker_niceness)
        },
    }


def backend(cfg) -> str:
    return ("nccl" if cfg.trainer.use_gpu else "gloo") if cfg.trainer.backend == "auto" else cfg.trainer.backend
