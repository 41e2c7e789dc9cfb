"""Ray Train meta-training: W workers, E = ``meta.episodes_per_step`` episodes each per step,
gradients averaged.

Semantics (docs/method.md section 6): optimizer step ``s`` covers episodes ``s*W*E .. (s+1)*W*E - 1``
and worker ``rank`` takes every W-th of them from ``s*W*E + rank`` (`step_episodes`), stacked
into one batch; inside `MetaLearner.step` the gradients of the inner (encoder/decoder, and
prototypes when ``meta.inner_updates_head``) and of the outer (head/temperature) updates are
all-reduced and averaged before each optimizer step. Every worker therefore holds the same
parameters, and W workers x E equal one process with ``meta.episodes_per_step = W*E`` (tested
on CPU with gloo). ``meta.episodes`` counts the episodes of all workers together. The two
all-reduces per step cost a wait for the slowest worker each, whatever E is, so a larger E
amortises them over more episodes.

After the loop the run's fusion folds (`fusion.fold_plan`) train in parallel, each with the
single-process loop at ``W*E`` episodes per step (so each fold network is trained as the run's
own network was): the workers take them from a shared queue, rank 0 once it has filled the
normal memory; rank 0 gathers the fold networks and chooses the fusion weights, as one process with
``meta.episodes_per_step = W*E`` would.

Checkpoints (`checkpoint.py`) go to the run's storage every ``trainer.checkpoint_every``
episodes and at the end; Ray Train keeps the newest ``trainer.keep_checkpoints``. After a
worker dies, Ray restarts the group (up to ``trainer.max_failures`` times) and the loop resumes
from the latest checkpoint; rerunning with the same run name (Ray Train V2) does the same. The
final model, resolved config and metrics are written with `save_run`, like the local trainer's,
so `metaad evaluate run=<name>` works unchanged.

The Ray plumbing lives here only: the learner is the same pure-PyTorch `MetaLearner`, given an
all-reduce as its `grad_sync` hook.

The driver is here (settings and cluster checks, the shared streaming setup, the trainer);
the loop every worker runs is `ray_worker.py`, its collectives `collectives.py`.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass

from omegaconf import OmegaConf

from metaad_dist.data.credentials import AwsSecrets, settings_env
from metaad_dist.data.ray_instance import check_worker_niceness, ensure_ray, ray_storage, worker_env
from metaad_dist.data.storage import storage_errors
from metaad_dist.errors import ConfigError, UserError
from metaad_dist.meta.learner import check_meta
from metaad_dist.train import shared_memory_sum
from metaad_dist.train.artifacts import METRICS_FILE
from metaad_dist.train.collectives import COLLECTIVES
from metaad_dist.train.commands import RunFolder, run_name
from metaad_dist.train.ray_worker import BACKENDS, FAULT_ENV, backend, fault_plan, train_worker
from metaad_dist.train.setup import check_sampler_setting

# Ray Train's controller collects reports when it polls the workers; at its default 2 s interval
# a worker reporting more often blocks until the next poll (the result queue holds one report).
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_DEFAULT_S = "0.2"


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
    check_worker_niceness(t)
    if t.grad_collective not in COLLECTIVES:
        raise ConfigError(f"trainer.grad_collective='{t.grad_collective}'; expected one of {list(COLLECTIVES)}")
    if t.grad_collective == "shared_memory" and (t.use_gpu or not shared_memory_sum.supported()):
        raise ConfigError("trainer.grad_collective=shared_memory needs CPU workers on an x86-64 machine "
                          f"(use_gpu={t.use_gpu}, machine {platform.machine()}); use auto")
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
    check_meta(cfg.meta)  # here, not first in every worker


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
                # a validation without a checkpoint is worth a report (a barrier with the
                # driver) only to a callback: Tune's, whose trials report at validations
                "report_validations": bool(callbacks),
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
                worker_runtime_env={"env_vars": worker_env(t, settings_env())},
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
