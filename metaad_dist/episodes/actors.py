"""Ray sampler actors: episodes streamed from a prepared dataset's Parquet shards (docs/method.md section 6).

    pool = SamplerPool.from_training_setup(cfg, setup)     # or SamplerPool(cfg, scaler, labeler, budget_row_ids)
    episode = pool.episode(step * num_workers + rank)      # blocking; prefetched ahead
    state = pool.state_dict(); pool.load_state_dict(state) # into / out of checkpoints
    pool.read_counters()["held_out_family"]["rows_read"]   # 0

A plan task (`build_plan`, episodes/shards.py) places the training rows of the normal families
and reads the budget pools once; `num_actors` FamilyShardActors then each own units (row groups)
of the normal families, keep a bounded buffer per family and build whole episodes, actor
`index % num_actors` building episode `index` (episodes/buffered.py, the Ray-free core). The
pool keeps a bounded window of outstanding ObjectRefs ahead of the consumer; episodes come back
through the object store, their arrays read in place (zero-copy, read-only).

Faults: actors run with `max_restarts` and unlimited task retries, and rebuild their buffers for
whatever episode they are asked next, so a killed actor is invisible to the consumer except for
the time it takes. Episodes are pure functions of (seed, index), so the sampler state in a
checkpoint is the episode counter (the RNG is counter-based: `default_rng([seed, index])`).
"""
from __future__ import annotations

import os
import resource
import time
from typing import Any, Optional

import numpy as np
import ray
from omegaconf import DictConfig, OmegaConf

from metaad_dist.config import Config, DataConfig, MetaConfig, SamplerConfig, StorageConfig
from metaad_dist.data.credentials import AwsSecrets, settings_env
from metaad_dist.data.ray_instance import worker_env
from metaad_dist.data.scaling import FeatureScaler
from metaad_dist.episodes.buffered import BufferedEpisodeSampler, EpisodeBlock, SamplerPlan
from metaad_dist.episodes.episode import Episode
from metaad_dist.episodes.shard_reader import COUNTERS, ShardReader, add_counters
from metaad_dist.episodes.shards import build_plan
from metaad_dist.errors import ConfigError, UserError
from metaad_dist.meta.labels import ClassLabeler

STATE_KIND = "sampler_pool"
def _one_thread() -> None:
    """One compute thread per sampler process: BLAS, OpenMP and torch threads oversubscribe
    small machines badly (torch ran 20x slower here beside Ray workers)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _plan_task(secrets: AwsSecrets, *args, **kwargs) -> tuple[SamplerPlan, dict, int]:
    import torch
    from threadpoolctl import threadpool_limits

    # A pooled worker may run other tasks afterwards: limit threads for this task only.
    secrets.install()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            plan, counters = build_plan(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)
    return plan, counters, _peak_rss()


class FamilyShardActor:
    """Owns units of the normal families (plan.owned[rank]) and builds episodes index % A == rank."""

    def __init__(self, rank: int, secrets: AwsSecrets):
        _one_thread()
        secrets.install()
        self.rank = rank
        self.reader: Optional[ShardReader] = None
        self.sampler: Optional[BufferedEpisodeSampler] = None
        self.started = time.time()

    def _load(self, plan: list) -> None:
        # The plan comes by reference with each call (not as a constructor argument, which Ray
        # cannot always recover for a restart): a fresh or restarted actor fetches it once.
        if self.sampler is None:
            loaded: SamplerPlan = ray.get(plan[0])
            self.reader = ShardReader(loaded)
            self.sampler = BufferedEpisodeSampler(loaded, self.rank, self.reader.read_unit)

    def episodes(self, plan: list, indices: list[int]) -> EpisodeBlock:
        self._load(plan)
        return EpisodeBlock.pack([self.sampler.episode(int(i)) for i in indices])

    def read_counters(self) -> dict:
        return self.reader.counters if self.reader is not None else {}

    def memory(self) -> dict:
        import psutil

        return {"rank": self.rank, "pid": os.getpid(), "rss": psutil.Process().memory_info().rss,
                "peak_rss": _peak_rss(), "started": self.started}


def _typed(node: Any, cls):
    if isinstance(node, DictConfig):
        return OmegaConf.to_object(node)
    return node if node is not None else cls()


def _get(ref):
    """ray.get, with a user error raised inside a task re-raised as the same one-line error."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise


class SamplerPool:
    """A pool of FamilyShardActors behind `episode(index)`; see the module docstring.

    Args:
        cfg: the run's Config (data, meta, sampler, storage, seed); `data.path` must be a
            prepared dataset (local folder or s3://bucket/prefix).
        scaler: the run's fitted FeatureScaler or its state_dict (fitted on training normal rows).
        labeler: the run's fitted ClassLabeler or its state_dict (labels for the inner cross-entropy).
        budget_row_ids: the run's budget pools {meta family: row ids} (TrainingView.budget_row_ids);
            None draws them exactly as the training view does, reading row ids only.
        layouts: the normal families' layouts of a streaming setup (shards.normal_layouts), so the
            plan task need not read the row ids again; None reads them.
    """

    def __init__(self, cfg: Config, scaler, labeler, budget_row_ids: Optional[dict[str, np.ndarray]] = None,
                 layouts: Optional[list] = None):
        data: DataConfig = _typed(cfg.data, DataConfig)
        meta: MetaConfig = _typed(cfg.meta, MetaConfig)
        settings: SamplerConfig = _typed(getattr(cfg, "sampler", None), SamplerConfig)
        storage: StorageConfig = _typed(cfg.storage, StorageConfig)
        if str(data.path).startswith("builtin:"):
            raise ConfigError(
                f"data.path={data.path}: sampler actors stream a prepared dataset; run "
                "`metaad prepare data=<dataset> output=<folder>` and set data.path to it"
            )
        scaler_state = scaler.state_dict() if isinstance(scaler, FeatureScaler) else scaler
        labeler_state = labeler.state_dict() if isinstance(labeler, ClassLabeler) else labeler
        self.settings = settings
        self.seed = int(cfg.seed)
        options: dict = {"num_cpus": settings.actor_cpus}
        # Ray processes inherit the node's environment, not the driver's: forward its AWS chain
        # (the keys as an argument, kept out of the logged runtime env; see data/credentials.py).
        on_s3 = str(data.path).startswith("s3://")
        secrets = AwsSecrets.from_environ() if on_s3 else AwsSecrets()
        env = worker_env(getattr(cfg, "trainer", None), settings_env() if on_s3 else None)
        if env:
            options["runtime_env"] = {"env_vars": env}
        budget = None if budget_row_ids is None else {str(f): np.asarray(v) for f, v in budget_row_ids.items()}
        plan_ref, counters_ref, peak_ref = ray.remote(_plan_task).options(
            **options, num_returns=3, max_retries=0
        ).remote(secrets, data.path, storage, data, meta, settings, self.seed, scaler_state, labeler_state, budget,
                 layouts)
        plan: SamplerPlan = _get(plan_ref)
        self.plan_counters, self.plan_peak_rss = ray.get([counters_ref, peak_ref])
        self._plan_ref = plan_ref  # actors get the plan by reference (again on a restart); keep it alive
        self.num_actors = plan.num_actors
        self.fingerprint = plan.fingerprint
        self.families = list(plan.families)
        self.budget_row_ids = {f: np.array(v) for f, v in plan.budget_row_ids.items()}
        self.refill_period = plan.refill_period
        actor_cls = ray.remote(FamilyShardActor).options(
            **options, max_restarts=settings.max_restarts, max_task_retries=-1 if settings.max_restarts else 0)
        self.actors = [actor_cls.remote(rank, secrets) for rank in range(self.num_actors)]
        self._reset_window()

    @classmethod
    def from_training_setup(cls, cfg: Config, setup, labeler: Optional[ClassLabeler] = None) -> "SamplerPool":
        """A pool for a run prepared by train.setup.prepare_training (its scaler and budget pools).

        The labeler is `labeler`, else `setup.labeler` when the setup keeps one, else refitted
        exactly as prepare_training fits it (k-means on the scaled training normal rows).
        """
        labeler = labeler or getattr(setup, "labeler", None)
        if labeler is None:
            labeler = ClassLabeler(len(setup.view.normal_families), cfg.model.pseudo_classes, cfg.seed)
            labeler.fit_transform(setup.scaler.transform(setup.view.normal_x), setup.view.normal_family_index)
        return cls(cfg, setup.scaler, labeler, setup.view.budget_row_ids, getattr(setup, "layouts", None))

    # -- episodes

    def _reset_window(self, start: Optional[int] = None) -> None:
        self._pending: dict[int, tuple[Any, int]] = {}
        self._blocks: dict[Any, list[Episode]] = {}
        self._frontier: Optional[int] = start
        self._next = start if start is not None else 0
        self._stride = getattr(self, "_stride", 1)
        self._last: Optional[int] = None

    def _submit(self, limit: int) -> None:
        """Ask the actors for every episode up to `limit` (along the stride) not yet requested."""
        per_call, stride, a = self.settings.episodes_per_call, self._stride, self.num_actors
        while self._frontier <= limit:
            indices = self._frontier + stride * np.arange(per_call * a)
            for rank in range(a):
                mine = [int(i) for i in indices if i % a == rank]
                if mine:
                    ref = self.actors[rank].episodes.remote([self._plan_ref], mine)
                    for k, i in enumerate(mine):
                        self._pending[i] = (ref, k)
            self._frontier = int(indices[-1]) + stride

    def episode(self, index: int) -> Episode:
        """Episode `index` (blocking); keeps `sampler.prefetch` episodes requested ahead along the
        stride between successive calls (1 in one process, num_workers in each Ray Train worker)."""
        index = int(index)
        if index < 0:
            raise ValueError(f"episode index {index} is negative")
        if self._last is not None and index > self._last and index - self._last != self._stride:
            self._stride = index - self._last
            self._pending.clear()
        if index not in self._pending:
            self._pending.clear()
            self._blocks.clear()
            self._frontier = index
        self._submit(index + self.settings.prefetch * self._stride)
        ref, k = self._pending.pop(index)
        block = self._blocks.get(ref)
        if block is None:
            block = self._blocks[ref] = ray.get(ref).episodes()
        if not any(r is ref for r, _ in self._pending.values()):
            self._blocks.pop(ref, None)
        self._last, self._next = index, index + self._stride
        return block[k]

    def expect_stride(self, stride: int) -> None:
        """Prefetch every `stride`-th episode (num_workers in a Ray Train worker) from the first call on;
        without it the stride is learnt from the first two calls."""
        if stride < 1:
            raise ValueError(f"stride {stride}; expected >= 1")
        if stride != self._stride:
            self._stride = stride
            self._pending.clear()
            self._blocks.clear()

    # -- checkpoints

    def state_dict(self) -> dict:
        """The sampler's whole state: the next episode and the settings it is valid for."""
        return {"kind": STATE_KIND, "version": 1, "seed": self.seed, "next_index": self._next,
                "stride": self._stride, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != STATE_KIND:
            raise ConfigError(f"sampler state of kind '{state.get('kind')}', expected '{STATE_KIND}'")
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                "sampler state was saved for another dataset, seed or data/meta/sampler settings "
                f"(fingerprint {state.get('fingerprint')} vs {self.fingerprint}); resume with the same "
                "data.path, seed, meta.* and sampler.* or use a new run name"
            )
        self._stride = int(state.get("stride", 1))
        self._reset_window(int(state["next_index"]))
        self._submit(self._next + self.settings.prefetch * self._stride)  # warm before the first call

    # -- observability

    def read_counters(self) -> dict[str, dict[str, int]]:
        """Per family: files, row groups, row ids, feature rows and bytes read, rows kept.

        The plan task's reads plus each live actor's (an actor restarted after a crash counts
        from zero again). Every family of the dataset is listed, untouched ones with zeros.
        """
        total = {f: dict.fromkeys(COUNTERS, 0) for f in self.families}
        add_counters(total, self.plan_counters)
        for counts in ray.get([a.read_counters.remote() for a in self.actors]):
            add_counters(total, counts)
        return total

    def memory(self) -> list[dict]:
        """pid, rss and peak rss of each actor process."""
        return ray.get([a.memory.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> "SamplerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # A pool handed to Ray Train workers travels without its prefetch window.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_pending", "_blocks", "_frontier", "_last"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_window(self._next)
