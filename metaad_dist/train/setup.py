"""Everything built before the episode loop, shared by the local loop and Ray Train workers."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from metaad_dist.config import Config, ModelConfig
from metaad_dist.data.roles import FamilyRoles
from metaad_dist.data.scaling import FeatureScaler
from metaad_dist.data.source import DatasetSource, open_source
from metaad_dist.data.views import TrainingView, build_training_view
from metaad_dist.episodes.sampler import EpisodeSampler
from metaad_dist.errors import ConfigError
from metaad_dist.meta.labels import ClassLabeler
from metaad_dist.model.memory import COMPONENTS
from metaad_dist.model.networks import BACKGROUND_FEATURES, MetaADModel
from metaad_dist.model.reconstruction import RECONSTRUCTIONS

# Fewer validation normal rows than this cannot calibrate the fused score's quartiles.
MIN_CALIBRATION_ROWS = 20


def configure_torch(trainer) -> torch.device:
    """Apply trainer settings to this process and return the device to train on."""
    if trainer.torch_threads > 0:
        torch.set_num_threads(trainer.torch_threads)
    return resolve_device(trainer.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device='{name}' but CUDA is not available; use 'cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device='{name}'; expected auto, cpu, cuda or cuda:N") from None


FUSION_RULES = ("delong", "one_se", "best_mean")  # how train/fusion.py picks among the fusion candidates


def check_model_config(cfg: ModelConfig) -> None:
    """One-line errors for model settings that would otherwise fail deep inside torch or sklearn."""
    for key in ("hidden_dims", "background_hidden", "memory_autoencoder_hidden"):
        if any(d <= 0 for d in getattr(cfg, key)):
            raise ConfigError(f"model.{key}={list(getattr(cfg, key))}; expected positive layer sizes")
    minimum = {"memory_rows": 0, "memory_k": 1, "memory_isolation_trees": 0, "memory_isolation_samples": 2,
               "memory_calibration_rows": MIN_CALIBRATION_ROWS, "pseudo_classes": 1,
               "memory_autoencoder_epochs": 1, "memory_autoencoder_batch": 1, "memory_pca_components": 1}
    for key, low in minimum.items():
        if getattr(cfg, key) < low:
            raise ConfigError(f"model.{key}={getattr(cfg, key)}; expected an integer >= {low}")
    if cfg.memory_autoencoder_lr <= 0:
        raise ConfigError(f"model.memory_autoencoder_lr={cfg.memory_autoencoder_lr}; expected a number > 0")
    if not 0 < cfg.temperature_min < cfg.temperature_init < cfg.temperature_max:
        raise ConfigError(
            f"model.temperature_init={cfg.temperature_init} with temperature_min={cfg.temperature_min}, "
            f"temperature_max={cfg.temperature_max}; expected 0 < temperature_min < temperature_init < temperature_max"
        )
    if cfg.odin_epsilon < 0:
        raise ConfigError(f"model.odin_epsilon={cfg.odin_epsilon}; expected a number >= 0 (0 switches it off)")
    if cfg.background_features not in BACKGROUND_FEATURES:
        raise ConfigError(
            f"model.background_features='{cfg.background_features}'; expected one of {', '.join(BACKGROUND_FEATURES)}")
    if cfg.fusion_rule not in FUSION_RULES:
        raise ConfigError(f"model.fusion_rule='{cfg.fusion_rule}'; expected one of {', '.join(FUSION_RULES)}")
    if cfg.fusion_folds < 1:
        raise ConfigError(f"model.fusion_folds={cfg.fusion_folds}; expected an integer >= 1")
    if not 0 < cfg.fusion_fold_episodes <= 1:
        raise ConfigError(
            f"model.fusion_fold_episodes={cfg.fusion_fold_episodes}; expected a fraction of meta.episodes in (0, 1]"
        )
    if fusion_candidates(cfg) is None:
        shown = [list(c) if isinstance(c, Sequence) else c for c in cfg.fusion_candidates]
        raise ConfigError(
            f"model.fusion_candidates={shown}; expected a non-empty list of [{', '.join(COMPONENTS)}] weights "
            f"(the last may be left out: 0), each >= 0 and not all 0"
        )
    if cfg.memory_reconstruction not in RECONSTRUCTIONS:
        raise ConfigError(
            f"model.memory_reconstruction='{cfg.memory_reconstruction}'; expected one of {', '.join(RECONSTRUCTIONS)}"
        )
    if cfg.memory_reconstruction == "autoencoder" and not cfg.memory_autoencoder_hidden:
        raise ConfigError(
            "model.memory_autoencoder_hidden=[] with model.memory_reconstruction=autoencoder; expected a layer list "
            "such as [64, 32], or memory_reconstruction=pca / none"
        )
    if cfg.memory_reconstruction == "none" and any(c[-1] > 0 for c in fusion_candidates(cfg)):
        raise ConfigError(
            "model.fusion_candidates gives the reconstruction evidence a weight but model.memory_reconstruction "
            "is none; expected pca or autoencoder, or reconstruction weights of 0"
        )


def fusion_candidates(cfg: ModelConfig) -> list[list[float]] | None:
    """model.fusion_candidates as one weight per COMPONENTS entry (a left-out reconstruction
    weight is 0), or None when they are malformed."""
    try:
        candidates = [[float(w) for w in c] for c in cfg.fusion_candidates]
    except (TypeError, ValueError):
        return None
    ok = candidates and all(len(COMPONENTS) - 1 <= len(c) <= len(COMPONENTS) and min(c) >= 0 and sum(c) > 0 for c in candidates)
    return [c + [0.0] * (len(COMPONENTS) - len(c)) for c in candidates] if ok else None


def model_arguments(cfg: ModelConfig, in_dim: int, num_classes: int, memory_rows: int = 0, calibration_rows: int = 0) -> dict:
    """Plain constructor arguments: they go into checkpoints so a model rebuilds without Hydra."""
    return {
        "in_dim": in_dim,
        "num_classes": num_classes,
        "hidden_dims": list(cfg.hidden_dims),
        "embed_dim": cfg.embed_dim,
        "dropout": cfg.dropout,
        "use_decoder": cfg.use_decoder,
        "temperature_init": cfg.temperature_init,
        "temperature_min": cfg.temperature_min,
        "temperature_max": cfg.temperature_max,
        "head": cfg.head,
        "background_init": cfg.background_init,
        "background_hidden": list(cfg.background_hidden),
        "background_reads_input": cfg.background_reads_input,
        "background_features": cfg.background_features,
        "memory_rows": memory_rows,
        "memory_k": cfg.memory_k,
        "calibration_rows": calibration_rows,
        "isolation_trees": cfg.memory_isolation_trees,
        "isolation_samples": cfg.memory_isolation_samples,
        "autoencoder_hidden": list(cfg.memory_autoencoder_hidden),
        "autoencoder_fit": [cfg.memory_autoencoder_epochs, cfg.memory_autoencoder_lr, cfg.memory_autoencoder_batch],
        "reconstruction": cfg.memory_reconstruction,
        # At most in_dim - 1: with as many components as features every row is rebuilt exactly.
        "pca_components": max(1, min(cfg.memory_pca_components, in_dim - 1)),
        "odin_epsilon": cfg.odin_epsilon,
    }


def memory_rows(cfg: ModelConfig, normal_x: np.ndarray, val_normal_x: np.ndarray, seed: int):
    """The normal rows the memory keeps and the validation rows that calibrate the fusion.

    Both are seeded subsets (at most memory_rows / memory_calibration_rows). No memory when it
    is switched off or there are too few rows to calibrate it.
    """
    if cfg.memory_rows <= 0 or len(normal_x) < cfg.memory_k or len(val_normal_x) < MIN_CALIBRATION_ROWS:
        return normal_x[:0], val_normal_x[:0]
    rng = np.random.default_rng(seed)

    def subset(x: np.ndarray, cap: int) -> np.ndarray:
        return x if len(x) <= cap else x[np.sort(rng.choice(len(x), cap, replace=False))]

    return subset(normal_x, cfg.memory_rows), subset(val_normal_x, cfg.memory_calibration_rows)


# How a run holds its data (setup.path): `memory` reads every training normal row into this
# process (the built-in dataset, small tables: fast and exact); `streaming` reads a bounded fit
# sample and streams episodes from the shards (episodes/stream.py, sampler actors).
PATHS = ("memory", "streaming")
SAMPLERS = ("auto", "memory", "stream", "actors")


@dataclass
class TrainingSetup:
    source: DatasetSource  # exposes per-family read counters when it is a prepared dataset
    roles: FamilyRoles
    view: TrainingView  # raw features, as read (streaming: the fit sample's rows)
    scaler: FeatureScaler  # fitted on training normal rows only (streaming: the fit sample's)
    sampler: object  # episode(index): EpisodeSampler (memory) or StreamingEpisodeSampler, scaled features
    model_args: dict
    val_normal_x: np.ndarray  # scaled
    validation_x: dict[str, np.ndarray]  # scaled
    memory_x: np.ndarray  # scaled training normal rows the model's normal memory keeps
    calibration_x: np.ndarray  # scaled validation normal rows that calibrate the score fusion
    labeler: Optional[ClassLabeler] = None  # fitted: the sampler actors reuse it instead of refitting k-means
    path: str = "memory"  # PATHS
    layouts: Optional[list] = None  # streaming: where each normal family's rows lie (episodes/buffered.py)
    summary: dict = field(default_factory=dict)  # what the setup read, for the log and metrics.json

    def describe(self) -> str:
        """One log line: which path the run takes and what it holds."""
        s = self.summary
        if self.path == "memory":
            return f"[data] in memory: {s['training_rows']} training normal rows held in this process"
        kind = "every row (the data fits data.fit_sample_rows)" if s["complete"] else f"{s['sample_rows']} sampled"
        return (f"[data] streaming: {s['training_rows']} training normal rows, statistics fitted on {kind}; "
                f"{s['rows_read']} rows decoded by setup; episodes streamed from the shards")

    def for_workers(self) -> "TrainingSetup":
        """A copy to ship to Ray Train workers: no open files or sampler (workers get the shared
        sampler pool and reopen the source with `with_source`)."""
        none = self.view.normal_x[:0]
        view = dataclasses.replace(self.view, normal_x=none, normal_family_index=self.view.normal_family_index[:0],
                                   val_normal_x=none)  # the raw fit sample: fitted already, not needed there
        return dataclasses.replace(self, source=None, sampler=None, view=view)

    def with_source(self, source: DatasetSource) -> "TrainingSetup":
        return dataclasses.replace(self, source=source)

    def run_metadata(self) -> dict:
        """What a saved run records about its data: roles, the budget pool, and the encoder."""
        meta = {
            "roles": {k: list(getattr(self.roles, k)) for k in ("normal", "meta", "validation", "held_out")},
            "budget_row_ids": {f: torch.from_numpy(ids) for f, ids in self.view.budget_row_ids.items()},
        }
        manifest = getattr(self.source, "manifest", None)
        if manifest is not None:
            from metaad_dist.data.encoding import FeatureEncoder

            encoder = FeatureEncoder.from_manifest(manifest)
            meta["encoder"] = {"columns": encoder.columns, "categories": encoder.categories, "encoding": encoder.encoding}
            meta["dataset"] = {"uri": self.source.uri, "shard_root": str(manifest.get("shard_root", ""))}
        return meta

    def build_model(self, seed: int) -> MetaADModel:
        torch.manual_seed(seed)
        return MetaADModel(**self.model_args)

    def finish_model(self, model: MetaADModel, score: str, seed: int) -> MetaADModel:
        """After training: fill the normal memory and calibrate the fused score (no-op without one)."""
        if model.memory is not None:
            device = next(model.parameters()).device
            model.fill_memory(
                torch.as_tensor(self.memory_x, device=device), torch.as_tensor(self.calibration_x, device=device),
                score, seed,
            )
        return model


def prepare_training(cfg: Config) -> TrainingSetup:
    source = open_source(cfg.data, cfg.storage)
    return build_setup(cfg, source, FamilyRoles.from_config(cfg.data, source.family_names()))


def check_sampler_setting(cfg: Config) -> None:
    if cfg.trainer.sampler not in SAMPLERS:
        raise ConfigError(f"trainer.sampler='{cfg.trainer.sampler}'; expected one of {list(SAMPLERS)}")
    if cfg.data.fit_sample_rows < 1:
        raise ConfigError(f"data.fit_sample_rows={cfg.data.fit_sample_rows}; expected a positive integer")


def choose_path(cfg: Config, source: DatasetSource, roles: FamilyRoles) -> str:
    """`memory` or `streaming` (PATHS), from trainer.sampler and, for `auto`, the manifest's row
    counts: streaming once the normal families hold more rows than data.fit_sample_rows."""
    check_sampler_setting(cfg)
    kind = cfg.trainer.sampler
    prepared = hasattr(source, "manifest")
    if kind == "actors" and cfg.trainer.name != "ray":
        raise ConfigError("trainer.sampler=actors needs trainer=ray; trainer=local streams in this process with "
                          "trainer.sampler=stream (or auto)")
    if kind == "stream" and cfg.trainer.name == "ray":
        raise ConfigError("trainer.sampler=stream is trainer=local's in-process sampler; with trainer=ray use "
                          "actors (or auto): one pool of sampler actors shared by every worker")
    if kind in ("stream", "actors") and not prepared:
        raise ConfigError(
            f"trainer.sampler={kind} streams a prepared dataset but data.path={cfg.data.path}; run "
            "`metaad prepare data=<dataset> output=<folder>` and set data.path to it"
        )
    if kind == "memory" or not prepared:
        return "memory"
    if kind == "auto":
        rows = sum(source.family_rows(f) for f in roles.normal)
        return "streaming" if rows > cfg.data.fit_sample_rows else "memory"
    return "streaming"


def build_setup(cfg: Config, source: DatasetSource, roles: FamilyRoles) -> TrainingSetup:
    check_model_config(cfg.model)
    if choose_path(cfg, source, roles) == "streaming":
        return build_streaming_setup(cfg, source, roles)
    view = build_training_view(source, roles, cfg.data, cfg.meta, cfg.seed)
    scaler = FeatureScaler(cfg.data.scaler, cfg.seed).fit(view.normal_x)
    normal_x = scaler.transform(view.normal_x)
    labeler = ClassLabeler(len(view.normal_families), cfg.model.pseudo_classes, cfg.seed)
    labels = labeler.fit_transform(normal_x, view.normal_family_index)
    budget = {f: scaler.transform(x) for f, x in view.budget_x.items()}
    sampler = EpisodeSampler(
        normal_x, labels, view.normal_family_index, len(view.normal_families), budget, cfg.meta, cfg.seed
    )
    summary = {"path": "memory", "training_rows": len(normal_x)}
    return _assemble(cfg, source, roles, view, scaler, labeler, normal_x, sampler, "memory", None, summary)


def build_streaming_setup(cfg: Config, source, roles: FamilyRoles) -> TrainingSetup:
    """The setup of a prepared dataset without holding its normal families: layouts from the
    row-id column (bits per row), statistics from a bounded fit sample, budget and validation
    rows fetched by id, episodes streamed (episodes/stream.py)."""
    from metaad_dist.data.views import check_meta_config
    from metaad_dist.episodes.shard_reader import ShardFiles
    from metaad_dist.episodes.shards import budget_pool, check_candidates, check_sampler, normal_layouts
    from metaad_dist.episodes.buffered import assign_units
    from metaad_dist.episodes.stream import StreamingEpisodeSampler, read_fit_sample, read_validation_family

    check_meta_config(cfg.meta)
    check_sampler(cfg.sampler)
    clock = _PhaseClock()
    files = ShardFiles.of(source, cfg.storage)
    layouts = normal_layouts(source, files, roles, cfg.data, cfg.seed)
    clock.lap("layouts")
    training_rows = sum(layout.training_rows for layout in layouts)
    need = cfg.meta.n_support + cfg.meta.n_query
    if training_rows < need:
        raise ConfigError(
            f"meta.n_support + meta.n_query = {need} exceeds the {training_rows} training normal rows; lower them"
        )
    # Before any feature is read: can the buffers of every actor serve an episode?
    owned = [assign_units(layout, cfg.sampler.num_actors, cfg.sampler.buffer_rows, cfg.seed) for layout in layouts]
    check_candidates(layouts, [[o[a] for o in owned] for a in range(cfg.sampler.num_actors)], cfg.meta, cfg.sampler)
    sample = read_fit_sample(files, layouts, source.feature_names, cfg.data.fit_sample_rows, cfg.seed)
    clock.lap("fit_sample_read")
    scaler = FeatureScaler(cfg.data.scaler, cfg.seed).fit(sample.train_x)
    normal_x = scaler.transform(sample.train_x)
    labeler = ClassLabeler(len(roles.normal), cfg.model.pseudo_classes, cfg.seed)
    labeler.fit_transform(normal_x, sample.family_index)
    clock.lap("scaler_and_pseudo_classes")
    raw = FeatureScaler("none")
    budget = {f: budget_pool(source, files, f, None, cfg.meta.budget, cfg.seed, raw) for f in roles.meta}
    for family, (_, ids) in budget.items():
        if len(ids) == 0:
            raise ConfigError(f"data.meta: family '{family}' has no training rows to draw shots from")
    validation = {}
    for family in roles.validation:
        validation[family] = read_validation_family(files, source, family, cfg.data.max_validation_rows, cfg.seed)
        if len(validation[family]) == 0:
            raise ConfigError(f"data.validation: family '{family}' has no training rows to validate on")
    clock.lap("budget_and_validation_rows")
    view = TrainingView(
        feature_names=list(source.feature_names),
        normal_families=list(roles.normal),
        normal_x=sample.train_x,
        normal_family_index=sample.family_index,
        val_normal_x=sample.val_x,
        budget_x={f: x for f, (x, _) in budget.items()},
        budget_row_ids={f: ids for f, (_, ids) in budget.items()},
        validation_x=validation,
    )
    sampler = StreamingEpisodeSampler(cfg, scaler, labeler, view.budget_row_ids, layouts)
    summary = {"path": "streaming", "training_rows": training_rows, "sample_rows": len(normal_x),
               "validation_normal_rows": len(sample.val_x), "complete": sample.complete,
               "rows_read": sample.rows_read, "fit_sample_rows": cfg.data.fit_sample_rows,
               "read_by_family": {f: dict(c) for f, c in files.counters.items()}, "phase_seconds": clock.phases}
    return _assemble(cfg, source, roles, view, scaler, labeler, normal_x, sampler, "streaming", layouts, summary)


class _PhaseClock:
    """Seconds per setup phase, for metrics.json (where a large dataset's setup time goes)."""

    def __init__(self):
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(now - self._last, 3)
        self._last = now


def _assemble(cfg, source, roles, view, scaler, labeler, normal_x, sampler, path, layouts, summary) -> TrainingSetup:
    val_normal_x = scaler.transform(view.val_normal_x)
    memory_x, calibration_x = memory_rows(cfg.model, normal_x, val_normal_x, cfg.seed)
    return TrainingSetup(
        source=source,
        roles=roles,
        view=view,
        scaler=scaler,
        sampler=sampler,
        model_args=model_arguments(cfg.model, normal_x.shape[1], labeler.num_classes, len(memory_x), len(calibration_x)),
        val_normal_x=val_normal_x,
        validation_x={f: scaler.transform(x) for f, x in view.validation_x.items()},
        memory_x=memory_x,
        calibration_x=calibration_x,
        labeler=labeler,
        path=path,
        layouts=layouts,
        summary=summary,
    )
