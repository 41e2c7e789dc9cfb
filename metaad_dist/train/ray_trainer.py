"""Ray Train meta-training: W workers, E = ``meta.episodes_per_step`` episodes each per step,
gradients averaged.

Semantics (METHOD.md section 6): optimizer step ``s`` covers episodes ``s*W*E .. (s+1)*W*E - 1``
and worker ``rank`` takes every W-th of them from ``s*W*E + rank`` (`step_episodes`), stacked
into one batch; inside `MetaLearner.step` the gradients of the inner (encoder/decoder, and
prototypes when ``meta.inner_updates_head``) and of the outer (head/temperature) updates are
all-reduced and averaged before each optimizer step. Every worker therefore holds the same
parameters, and W workers x E equal one process with ``meta.episodes_per_step = W*E`` (tested
on CPU with gloo). ``meta.episodes`` counts the episodes of all workers together. The two
all-reduces per step cost a wait for the slowest worker each, whatever E is, so a larger E
amortises them over more episodes.

After the loop the run's fusion folds (`fusion.fold_plan`) train in parallel, fold ``f`` on
worker ``f mod W`` with the single-process loop at ``W*E`` episodes per step (so each fold
network is trained as the run's own network was), while rank 0 also fills the normal memory;
rank 0 gathers the fold networks and chooses the fusion weights, as one process with
``meta.episodes_per_step = W*E`` would.

Checkpoints (`checkpoint.py`) go to the run's storage every ``trainer.checkpoint_every``
episodes and at the end; Ray Train keeps the newest ``trainer.keep_checkpoints``. After a
worker dies, Ray restarts the group (up to ``trainer.max_failures`` times) and the loop resumes
from the latest checkpoint; rerunning with the same run name (Ray Train V2) does the same. The
final model, resolved config and metrics are written with `save_run`, like the local trainer's,
so `metaad evaluate run=<name>` works unchanged.

The Ray plumbing lives here only: the learner is the same pure-PyTorch `MetaLearner`, given an
all-reduce as its `grad_sync` hook.

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
from metaad_dist.data.credentials import AwsSecrets, settings_env
from metaad_dist.data.storage import storage_errors
from metaad_dist.episodes.episode import Episode
from metaad_dist.errors import ConfigError, UserError
from metaad_dist.meta.learner import MetaLearner, metrics_as_floats, step_episodes
from metaad_dist.train.artifacts import METRICS_FILE, TrainedModel
from metaad_dist.train.checkpoint import (
    checkpoint_dir_name,
    checkpoint_uri,
    load_checkpoint,
    restore,
    sampler_state,
    save_checkpoint,
)
from metaad_dist.train.commands import RunFolder, run_location, run_name, save_trained_run
from metaad_dist.train.fusion import choose_fusion, fold_network, fold_plan
from metaad_dist.train.local import crossed, fit_network_only, validation_auroc
from metaad_dist.data.ray_instance import ensure_ray, ray_storage
from metaad_dist.data.source import open_source
from metaad_dist.train.setup import check_sampler_setting, configure_torch, prepare_training

BACKENDS = ("auto", "gloo", "nccl")
FAULT_ENV = "METAAD_FAULT_AFTER_EPISODES"
# Ray Train's controller collects reports when it polls the workers; at its default 2 s interval
# a worker reporting more often blocks until the next poll (the result queue holds one report).
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_DEFAULT_S = "0.2"
SHOWN = ("inner_loss", "outer_loss", "confidence_margin", "temperature", "val_auroc", "episodes_per_s")


# --------------------------------------------------------------------------- episodes


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


def shared_streaming_setup(cfg):
    """(setup, pool) built once by the driver when the run streams (train/setup.py choose_path),
    else (None, None): then each worker builds its in-memory setup itself."""
    from metaad_dist.data.roles import FamilyRoles
    from metaad_dist.data.source import open_source
    from metaad_dist.episodes.actors import SamplerPool
    from metaad_dist.train.setup import build_setup, choose_path

    source = open_source(cfg.data, cfg.storage)
    roles = FamilyRoles.from_config(cfg.data, source.family_names())
    if choose_path(cfg, source, roles) != "streaming":
        return None, None
    started = time.perf_counter()
    setup = build_setup(cfg, source, roles)
    if not cfg.quiet:
        print(setup.describe(), file=sys.stderr, flush=True)
    planned = time.perf_counter()
    pool = SamplerPool.from_training_setup(cfg, setup)
    setup.summary["phase_seconds"]["sampler_pool"] = round(time.perf_counter() - planned, 3)
    setup.summary["driver_setup_seconds"] = time.perf_counter() - started  # setup and the pool's plan
    return setup, pool


# --------------------------------------------------------------------------- collectives


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


# --------------------------------------------------------------------------- the worker loop


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
    averager = GradientAverager()
    learner = MetaLearner(
        setup.build_model(cfg.seed), cfg.meta, device, averager if world > 1 else None,
        seed=cfg.seed, stat_sync=mean_over_workers_tensor if world > 1 else None,
    )
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

    start, cpu_start = time.perf_counter(), time.process_time()
    window, totals = Window(), {"sampler_wait_s": 0.0, "report_s": 0.0}
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="metaad-episodes")
    pending = prefetch.submit(draw, step) if step < steps else None
    for s in range(step, steps):
        waiting = time.perf_counter()
        episodes = pending.result()
        waited = time.perf_counter() - waiting
        if s + 1 < steps:  # the next step's episodes are drawn while this step trains
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

        # Every worker reaches this point at the same steps: report() is a barrier.
        reporting = time.perf_counter()
        row = {**metrics_as_floats(metrics), **window.close(per_step, averager.seconds)}
        if world > 1:
            row = mean_over_workers(row, device)
            row["param_spread"] = parameter_spread(learner.model)
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
                "config": OmegaConf.to_yaml(cfg),
            })
        ray.train.report(
            row,
            checkpoint=ckpt,
            checkpoint_dir_name=checkpoint_dir_name(done) if save else None,
            delete_local_checkpoint_after_upload=ckpt is not None,
        )
        totals["report_s"] += time.perf_counter() - reporting
        window = Window(averager.seconds)
    prefetch.shutdown()  # the shared pool's actors belong to the driver, which stops them

    totals.update(loop_s=time.perf_counter() - start, cpu_s=time.process_time() - cpu_start, allreduce_s=averager.seconds,
                  setup_s=start - entered)
    if world > 1:
        totals = mean_over_workers(totals, device)
    learner.model.eval()
    fusion = finish_in_parallel(cfg, setup, learner.model, rank, world, lambda line: say(cfg, rank, line))
    if rank == 0:
        trained = TrainedModel(learner.model.cpu(), setup.scaler, setup.view.feature_names, cfg.model.score)
        summary = loop_summary(cfg, world, steps, first_step, totals)
        summary["trainer"]["fusion"] = fusion
        save_trained_run(cfg, run_location(cfg), trained, setup, history, seconds_before + totals["loop_s"], summary)


def finish_in_parallel(cfg, setup, model, rank: int, world: int, log) -> dict:
    """`fusion.finish_training` spread over the workers: fold f trains on worker f mod W, at
    W*E episodes per step like the run itself; rank 0 fills the memory first, then gathers
    the fold networks and chooses the weights. Every worker calls it (the gather is a barrier).
    Returns, for metrics.json, the folds each worker trained and the seconds each part took."""
    started = time.perf_counter()
    fold_cfg = OmegaConf.merge(cfg, {"meta": {"episodes_per_step": world * cfg.meta.episodes_per_step}})
    families = fold_plan(fold_cfg, setup, model, fit_network_only)
    memory_s = 0.0
    if rank == 0:
        setup.finish_model(model, cfg.model.score, cfg.seed)
        memory_s = time.perf_counter() - started
    folds_started = time.perf_counter()
    mine = {f: fold_network(fold_cfg, setup, f, fit_network_only).cpu() for f in families[rank::world]}
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


def loop_summary(cfg, world: int, steps: int, first_step: int, totals: dict) -> dict:
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
            # Reports with their validation and checkpoint writes.
            "report_fraction": share("report_s"),
        },
    }


# --------------------------------------------------------------------------- the driver


def check_settings(cfg) -> None:
    t = cfg.trainer
    if t.num_workers < 1:
        raise ConfigError(f"trainer.num_workers={t.num_workers}; expected at least 1")
    if t.cpus_per_worker <= 0:
        raise ConfigError(f"trainer.cpus_per_worker={t.cpus_per_worker}; expected a positive number")
    if t.backend not in BACKENDS:
        raise ConfigError(f"trainer.backend='{t.backend}'; expected one of {list(BACKENDS)}")
    if t.backend == "nccl" and not t.use_gpu:
        raise ConfigError("trainer.backend='nccl' needs trainer.use_gpu=true; use gloo (or auto) on CPU")
    check_sampler_setting(cfg)
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"trainer.device='{t.device}'; with trainer=ray use auto, cpu or cuda (Ray assigns each worker its GPU)")
    if t.device == "cuda" and not t.use_gpu:
        raise ConfigError("trainer.device='cuda' needs trainer.use_gpu=true with trainer=ray")
    if t.device == "cpu" and t.use_gpu:
        raise ConfigError("trainer.device='cpu' contradicts trainer.use_gpu=true")
    for key in ("checkpoint_every", "log_every", "validate_every"):
        if getattr(t, key) < 0:
            raise ConfigError(f"trainer.{key}={getattr(t, key)}; expected 0 or more")
    if t.keep_checkpoints < 1:
        raise ConfigError(f"trainer.keep_checkpoints={t.keep_checkpoints}; expected at least 1")
    if t.max_failures < 0:
        raise ConfigError(f"trainer.max_failures={t.max_failures}; expected 0 or more")
    if cfg.meta.episodes < 1:
        raise ConfigError(f"meta.episodes={cfg.meta.episodes}; expected at least 1")


def check_cluster(cfg) -> None:
    """Refuse a run that the Ray instance cannot place, in one line, instead of hanging.

    On a cluster reached through RAY_ADDRESS (`metaad` under Ray Jobs, a KubeRay RayJob) nodes
    that the autoscaler has not started yet do not count in cluster_resources(): there the
    missing workers are requested from the autoscaler (ray.autoscaler.sdk.request_resources) and
    Ray Train waits for them.
    """
    import ray

    t = cfg.trainer
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    problem = None
    if t.num_workers * t.cpus_per_worker > cpus:
        need = f"trainer.num_workers={t.num_workers}" + (
            f" x trainer.cpus_per_worker={t.cpus_per_worker:g}" if t.cpus_per_worker != 1 else ""
        )
        problem = f"{need} exceeds the {cpus:g} CPUs of the Ray cluster"
    elif t.use_gpu and t.num_workers > gpus:
        problem = f"trainer.num_workers={t.num_workers} with trainer.use_gpu=true exceeds the {gpus:g} GPUs of the Ray cluster"
    if problem is None:
        return
    if not os.environ.get("RAY_ADDRESS"):
        raise ConfigError(problem)
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": float(t.cpus_per_worker), **({"GPU": 1.0} if t.use_gpu else {})}
    request_resources(bundles=[bundle] * t.num_workers)
    print(f"[ray] {problem} now; asked its autoscaler for {t.num_workers} x {bundle}, waiting", file=sys.stderr, flush=True)


def backend(cfg) -> str:
    return ("nccl" if cfg.trainer.use_gpu else "gloo") if cfg.trainer.backend == "auto" else cfg.trainer.backend


def failure_error(exc: BaseException, name: str) -> UserError:
    """One line for a failed fit: the first UserError behind it (same class), else the last line of the cause."""
    from metaad_dist.train.ray_backend import user_error_in

    failures = [f for f in [*getattr(exc, "worker_failures", {}).values(), getattr(exc, "controller_failure", None)] if f]
    for failure in [*failures, exc]:
        cause = user_error_in(failure)
        if cause is not None:
            return type(cause)(f"training run '{name}' failed: {cause}")
    first = failures[0] if failures else exc
    lines = [line.strip() for line in str(first).splitlines() if line.strip()]
    return UserError(f"training run '{name}' failed: {lines[-1] if lines else type(first).__name__}")


@dataclass
class RayTrainResult:
    location_uri: str
    metrics: dict
    resumed_at: int = 0  # episodes of the newest checkpoint when this command started


def train_ray(cfg, callbacks: tuple = ()) -> RayTrainResult:
    """Run (or resume) the run `cfg.run` with Ray Train; the trained run lands in storage.

    `callbacks` go to RunConfig (Ray Tune passes its TuneReportCallback)."""
    import json

    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.exceptions import TrainingFailedError

    from metaad_dist.train.ray_backend import BoundTorchConfig, MetaadTorchTrainer

    check_settings(cfg)
    folder = RunFolder(cfg)  # S3: endpoint, credentials and bucket checked here, one line each
    folder.check()  # writable, and a finished run is not replaced without overwrite=true
    location = folder.location
    storage_path, filesystem = ray_storage(location)
    if not location.is_s3:  # Ray Train creates the run folder inside it when training starts
        with storage_errors(location.uri):
            location.fs.create_dir(storage_path, recursive=True)
    fault = os.environ.get(FAULT_ENV)
    fault_plan(fault)
    started = ensure_ray()
    try:
        check_cluster(cfg)
        folder.start()
        os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_DEFAULT_S)
        t = cfg.trainer
        setup, pool = shared_streaming_setup(cfg)
        trainer = MetaadTorchTrainer(
            train_worker,
            train_loop_config={
                "cfg": OmegaConf.to_container(cfg, resolve=True), "fault": fault, "aws": AwsSecrets.from_environ(),
                "setup": setup.for_workers() if setup is not None else None, "pool": pool,
            },
            torch_config=BoundTorchConfig(backend=backend(cfg)),  # rendezvous on the group's address only
            scaling_config=ScalingConfig(
                num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
            ),
            run_config=RunConfig(
                name=run_name(cfg),
                storage_path=storage_path,
                storage_filesystem=filesystem,
                # worker deaths are retried; a UserError fails at once (ray_backend.UserErrorsFailFast)
                failure_config=FailureConfig(max_failures=t.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                worker_runtime_env={"env_vars": settings_env()},
                callbacks=list(callbacks),
                # Ray Train's INFO lines repeat every report's metrics; the workers print progress.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
        )
        try:
            trainer.fit()
        except TrainingFailedError as exc:
            raise failure_error(exc, run_name(cfg)) from None
        finally:
            if pool is not None:
                pool.shutdown()
    except BaseException:
        folder.discard_if_empty()
        raise
    finally:
        if started:
            ray.shutdown()
    metrics = json.loads(location.read_bytes(METRICS_FILE))
    return RayTrainResult(location.uri, metrics, folder.resumed_at)
