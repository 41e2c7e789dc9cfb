"""Structured configs: the single source of truth for every setting.

Each dataclass backs one config group in ``configs/`` (``data/``, ``model/``, ``meta/``, ...).
They are registered once in Hydra's ConfigStore as the schema of the primary config, so
OmegaConf's struct mode rejects unknown keys and ill-typed values before any work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from metaad_dist.errors import ConfigError, one_line


@dataclass
class FamilyRule:
    """Family of a file's rows taken from the file name and row range (data.source.family_rules)."""

    match: str = ""  # regular expression searched in the file's name (not its folder)
    family: str = ""  # the family; \1 or \g<name> take groups of `match`
    rows: list[int] = field(default_factory=list)  # [start, stop): 0-based data rows; [] = every row


@dataclass
class SourceConfig:
    """How `metaad prepare` turns raw tables into Parquet shards (docs/method.md section 2)."""

    train_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    format: str = "auto"  # auto | csv | parquet | npz | whitespace (csv covers .csv.gz and a zip holding one csv)
    has_header: bool = True
    column_names: list[str] = field(default_factory=list)  # for headerless CSVs
    encoding: str = "utf-8-sig"  # utf-8-sig also strips a BOM (UNSW-NB15)
    family_column: str = "family"
    drop_columns: list[str] = field(default_factory=list)
    categorical_columns: list[str] = field(default_factory=list)
    categorical_encoding: str = "onehot"  # onehot | index
    label_map: Optional[str] = None  # CSV: raw label -> family
    label_map_from: str = "attack"
    label_map_to: str = "category"
    nonfinite_policy: str = "drop"  # drop (and count) | fail
    row_group_size: int = 65536
    rows_per_shard: int = 1_000_000
    # Added by the data plane (issue 3).
    label_strip_suffix: str = ""  # e.g. "." for KDD Cup 99 labels such as "smurf."
    max_categories: int = 1024  # per categorical column; more is almost surely an id column
    npz_features_key: str = "x"  # NPZ inputs: (n, d) feature array
    npz_family_key: str = "y"  # NPZ inputs: (n,) family labels
    csv_block_size: int = 8 << 20  # bytes per streamed CSV block
    compression: str = "snappy"  # Parquet codec of the shards: snappy | zstd | gzip | lz4 | none
    overwrite: bool = False  # replace an existing prepared dataset at the destination
    # Reading and encoding in Ray tasks (data/parallel_read.py): auto | ray | serial. auto uses Ray
    # when the inputs total at least parallel_min_bytes; a plain CSV is split into byte ranges.
    parallel: str = "auto"
    parallel_min_bytes: int = 64 << 20
    parallel_block_bytes: int = 16 << 20  # bytes of CSV per task
    # format=whitespace (headerless numbers split by runs of blanks): files whose name matches one
    # of these regular expressions are stored transposed (a row per column); read whole, transposed.
    transpose_files: list[str] = field(default_factory=list)
    # Families from file names and row ranges instead of a column (first matching rule wins); the
    # reader adds them as column `family_column`, so every row must be covered.
    family_rules: list[FamilyRule] = field(default_factory=list)


@dataclass
class DataConfig:
    """A dataset and the role each of its families plays in an experiment."""

    name: str = MISSING
    # "builtin:digits" or a prepared dataset folder (local path or s3://bucket/prefix).
    path: str = MISSING
    source: SourceConfig = field(default_factory=SourceConfig)
    normal: list[str] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    # Normal rows without an official split are divided train/val/test by seed.
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    # Rows of validation families kept for model selection; the rest are never read.
    max_validation_rows: int = 2000
    scaler: str = "standard"  # standard | quantile | none
    # Out-of-core training (train/setup.py, episodes/stream.py): at most this many rows of the
    # normal families are decoded to fit the scaler, the pseudo-classes, the normal memory and the
    # calibration rows; a prepared dataset with more normal rows streams its episodes
    # (trainer.sampler=auto). Smaller: less memory and setup time, noisier statistics.
    fit_sample_rows: int = 262144


@dataclass
class ModelConfig:
    """Encoder f, optional decoder g, head h and bounded temperature T (docs/method.md section 3)."""

    hidden_dims: list[int] = field(default_factory=lambda: [128, 64])
    embed_dim: int = 32
    dropout: float = 0.0
    use_decoder: bool = True
    # prototype: distance logits + background logit (distance-aware) | linear: plain linear head
    head: str = "prototype"
    background_init: float = -2.0
    # The background logit: hidden sizes of its MLP ([] = linear b + w.z), and whether it reads
    # the input row instead of the embedding (prototype head only).
    background_hidden: list[int] = field(default_factory=lambda: [100, 50])
    background_reads_input: bool = True
    # What a background logit reading the input row sees: row = the scaled row x | deviation = |x|,
    # each feature's distance from the training normal centre. Why deviation exists and why it is
    # not the default: docs/method.md section 3, benchmarks/README.md (fusion grid).
    background_features: str = "row"
    # K for a single normal family: k-means pseudo-classes of the training normal rows.
    pseudo_classes: int = 16
    temperature_init: float = 1.0
    temperature_min: float = 0.3
    temperature_max: float = 1.05
    score: str = "msp"  # msp: 1 - max softmax | energy: -T logsumexp(logits / T)
    # ODIN input perturbation x + eps * sign(grad_x log S(x)) (docs/method.md section 5), applied
    # in the outer loop and when scoring; 0 = off. Part of the model: checkpoints carry it.
    odin_epsilon: float = 0.0
    # Normal memory (model/memory.py): training normal rows kept for one-class evidence (kNN
    # distance, isolation depth) fused with the network score, calibrated on validation normal
    # rows. 0 rows switches it off.
    memory_rows: int = 16384
    memory_k: int = 5
    memory_isolation_trees: int = 100  # isolation forest on the memory rows (0 = kNN only)
    memory_isolation_samples: int = 256  # rows per tree (Liu et al.'s default)
    memory_calibration_rows: int = 10000
    # Reconstruction evidence, the fourth (model/reconstruction.py), fitted on the memory rows:
    # pca (residual off the top memory_pca_components principal directions, closed form; at most
    # features - 1 of them),
    # autoencoder (memory_autoencoder_* below: layers, and epochs / lr / batch of its AdamW fit) or
    # none. pca is the default: on the benchmark datasets it rebuilds validation normal rows better
    # than the 150-epoch autoencoder at about 1/100 of its cost (UNSW-NB15 cell 45 s -> 25 s;
    # benchmarks/README.md, fit cost).
    memory_reconstruction: str = "pca"
    memory_pca_components: int = 32
    memory_autoencoder_hidden: list[int] = field(default_factory=lambda: [64, 32])
    memory_autoencoder_epochs: int = 150
    memory_autoencoder_lr: float = 1e-3
    memory_autoencoder_batch: int = 128
    # Fusion weights of the (network, kNN, isolation, reconstruction) evidences; a candidate of
    # three leaves the reconstruction weight at 0. With several candidates the run picks one by
    # leave-one-meta-family-out on its own meta families (train/fusion.py, fusion_rule); a run
    # with a single meta family takes the first.
    # (list[Any]: OmegaConf would refuse integer weights such as [[0,1,1]] in list[list[float]].)
    fusion_candidates: list[Any] = field(default_factory=lambda: [[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    fusion_folds: int = 4  # meta families held out in turn for that choice (each one a training run)
    # Each fold network trains this fraction of meta.episodes (train/fusion.py fold_episodes). 0.25
    # costs a quarter but changed UNSW-NB15's choices, AUROC 0.967 -> 0.953 (benchmarks/README.md, fit cost).
    fusion_fold_episodes: float = 1.0
    # How that choice is made (train/fusion.py pick_candidate): the best mean AUROC over the
    # held-out folds, except that a candidate giving the network less weight wins when it is
    # within delong = one standard error of the paired AUROC difference (from the shots and
    # normal rows measured) | one_se = one standard error of the per-fold gaps | best_mean = no
    # tolerance.
    fusion_rule: str = "delong"


@dataclass
class OptimizerConfig:
    name: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    grad_clip: float = 0.0  # 0 disables clipping


@dataclass
class MetaConfig:
    """Episodes and the first-order bi-level update (docs/method.md sections 4-5)."""

    episodes: int = 600
    inner_steps: int = 1
    outer_steps: int = 1
    n_support: int = 256
    n_query: int = 256
    k_shot: int = 5
    budget: int = 10  # labelled rows per meta family, drawn once per seed
    normal_per_episode: int = 0  # 0: all normal families in every episode
    meta_per_episode: int = 0  # 0: all meta families in every episode
    # Inner objective: confidence BCE + class cross-entropy + reconstruction.
    inner_bce_weight: float = 1.0
    class_ce_weight: float = 1.0
    lambda_rec: float = 1.0
    inner_updates_head: bool = True
    # Outer objective: BCE(S(query),1) + BCE(S(shots),0) + margin + temperature prior.
    margin: float = 0.5
    lambda_m: float = 0.1
    lambda_t: float = 0.01
    # Keeps the calibrated head a good normal-family classifier (cross-entropy on query rows).
    outer_class_ce_weight: float = 0.0
    inner_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    outer_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.0)
    )
    warmup_episodes: int = 0  # inner loop only for the first episodes
    # Per optimizer step (per Ray Train worker), stacked in one batch: W workers x E = one process with W*E.
    episodes_per_step: int = 1
    # simultaneous: last inner and first outer gradient at the same parameters (one collective); or sequential
    update_order: str = "simultaneous"
    # Options of docs/method.md section 5 (meta/pcgrad.py, meta/curriculum.py); off until an
    # ablation (benchmarks/ablations.py) shows they raise held-out AUROC.
    pcgrad: bool = False  # drop the part of each family's outer gradient that fights the inner one
    # > 0: each outer update uses this many meta families, the hardest (lowest confidence
    # margin) drawn most often; needs every meta family in every episode (meta_per_episode=0).
    # With N or fewer meta families (e.g. a fusion sub-run) every family is used, as without it.
    curriculum_families: int = 0
    curriculum_temperature: float = 0.1  # softmax temperature over -margin (smaller: greedier)
    curriculum_momentum: float = 0.9  # moving average of each family's margin across episodes
    # > 0: this many synthetic anomalies per episode join the shots (meta/synthetic.py): support rows
    # shifted +-U(synthetic_scale) normal stds on a random synthetic_fraction of their features.
    synthetic_shots: int = 0
    synthetic_fraction: float = 0.25
    synthetic_scale: list[float] = field(default_factory=lambda: [1.0, 3.0])


@dataclass
class TrainerConfig:
    name: str = "local"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # CPU threads for torch ops; small MLPs run fastest on one (more threads oversubscribe
    # the cores, e.g. beside Ray workers). 0 keeps torch's default.
    torch_threads: int = 1
    log_every: int = 50
    validate_every: int = 100
    # Local trainer: processes that train the fusion fold networks (train/fold_processes.py), this
    # one included, beside its episode loop. 0: one per CPU core this process may use, at most
    # one per fold plus the loop; 1: all in this process, one after another. CPU only (forked).
    fold_processes: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    # Ray Train (trainer=ray, metaad_dist/train/ray_trainer.py); the local trainer ignores these.
    cpus_per_worker: float = 1.0
    backend: str = "auto"  # auto (nccl with use_gpu, else gloo) | gloo | nccl
    # How workers sum gradients: all_reduce | all_gather (each gathers every worker's flat gradient,
    # sums in rank order; W times the traffic) | shared_memory (that sum through a segment CPU
    # workers on one x86-64 machine map: train/shared_memory_sum.py; ~0.2 ms a sum here against
    # gloo's ~1.5 ms) | auto (shared_memory where every worker maps it, else all_gather; nccl: all_reduce).
    grad_collective: str = "auto"
    # auto: memory for the built-in data and prepared datasets whose normal rows fit
    # data.fit_sample_rows, else streaming (stream with trainer=local, actors with trainer=ray)
    # memory: every training normal row in each process | stream: bounded buffers in this process
    # actors: Ray sampler actors shared by every Ray Train worker
    sampler: str = "auto"
    checkpoint_every: int = 200  # episodes (all workers together) between checkpoints; 0: at the end only
    keep_checkpoints: int = 2  # newest checkpoints kept in the run's storage
    max_failures: int = 2  # automatic restarts from the latest checkpoint after a worker dies
    # Unix niceness (0-19) of the Ray processes a job computes in (Train workers, sampler and scoring
    # actors). Ray's 15 loses every core to anything else on the node, which a plain process at 0
    # does not (benchmarks/README.md, "Worker niceness"). -1 keeps Ray's default.
    worker_niceness: int = 0


@dataclass
class StorageConfig:
    """Where runs and prepared datasets live: a local folder or s3://bucket/prefix."""

    root: str = "runs"
    endpoint_url: Optional[str] = None  # S3-compatible endpoint; credentials come from the AWS chain
    region: Optional[str] = None
    create_bucket: bool = False
    # Added by the data plane (issue 3): S3 client behaviour (boto3 checks and pyarrow I/O).
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 60.0
    max_attempts: int = 3
    # Check each prepared shard against the sha256 in its manifest when a process first opens it
    # (issue 22). Off only for storage you trust not to change bytes under you.
    verify_checksums: bool = True


@dataclass
class EvalConfig:
    """Evaluation and the baselines beside the method (docs/method.md section 7, eval/baselines/)."""

    baselines: list[str] = field(default_factory=lambda: ["inner_only", "isolation_forest"])
    output: Optional[str] = None  # report folder; default <run>/report
    # Budgets at which `evaluate` retrains the method on the same split for the AUROC-vs-budget
    # plot (empty: the run's own budget only).
    budget_curve: list[int] = field(default_factory=list)
    isolation_forest_estimators: int = 200
    # Neural baselines (supervised_mlp, deep_svdd, deep_sad, devnet, prenet). Defaults follow
    # DeepOD's tabular models, the peer implementation behind ANCHORS.md; one epoch is
    # ceil(training rows / batch size) steps, capped by net_max_steps_per_epoch when > 0.
    net_hidden_dims: list[int] = field(default_factory=lambda: [100, 50])  # supervised_mlp uses model.*
    net_epochs: int = 50
    net_batch_size: int = 64
    net_lr: float = 1e-3
    net_weight_decay: float = 0.0
    net_max_steps_per_epoch: int = 0
    deep_sad_rep_dim: int = 128  # also Deep SVDD
    deep_sad_eta: float = 1.0  # weight of the labelled-anomaly term
    devnet_margin: float = 5.0  # a: labelled anomalies at least a std above the N(0,1) prior
    devnet_reference_size: int = 5000  # l: prior scores drawn per step
    prenet_rep_dim: int = 128
    prenet_pair_targets: list[float] = field(default_factory=lambda: [8.0, 4.0, 0.0])  # (a,a) (a,u) (u,u)
    prenet_score_pairs: int = 30  # E: anomalies and normal rows each new row is paired with


@dataclass
class SamplerConfig:
    """Ray sampler actors: episodes streamed from a prepared dataset's shards (docs/method.md section 6).

    Each actor keeps a bounded buffer per normal family, refilled from Parquet row groups, and
    builds whole episodes; a family with at most `buffer_rows` training rows is held whole by
    every actor (then episodes equal the in-memory EpisodeSampler's). Episodes are a pure
    function of (seed, episode index) for given values of these settings and the data layout.
    """

    num_actors: int = 2
    buffer_rows: int = 65536  # training rows per normal family held by each actor
    refill_fraction: float = 0.25  # share of a buffer replaced by the next streamed rows per refill
    # About how often a streamed row is drawn before it leaves the buffer: sets the refill period.
    reuse: float = 4.0
    batch_rows: int = 16384  # rows decoded per Parquet read batch (bounds the memory of a read)
    prefetch: int = 128  # episodes requested ahead of the one being consumed
    episodes_per_call: int = 32  # episodes one actor call builds (amortises the call overhead)
    max_restarts: int = 3  # a crashed actor is restarted and rebuilds its buffers
    actor_cpus: float = 0.0  # CPUs reserved per actor; 0 shares the cores with training workers


@dataclass
class ScoreConfig:
    """`metaad score` at scale (eval/score_ray.py): Ray Data actors score a folder or prefix."""

    concurrency: int = 0  # scoring actors (each loads the model once); 0: one per CPU of the Ray cluster
    # CPUs reserved per actor: below 1 leaves room for the read and write tasks (all CPUs taken by
    # actors would starve them).
    cpus_per_actor: float = 0.5
    batch_rows: int = 65536  # rows per scored batch (bounds each actor's memory)
    # Blocks queued on one actor at a time. 1: a block waits for an idle actor instead of queuing
    # behind a busy one (with Ray's default, the first actor ready took a small input's every
    # block while the others idled).
    tasks_per_actor: int = 1
    # A single input file up to this size is scored in this process, without starting Ray.
    in_process_max_bytes: int = 64 << 20
    # Object-store bytes Ray Data may hold in flight for this job (the bound on memory whatever
    # the input size: the streaming executor backpressures reads when it is reached); 0: Ray's own
    # default, a share of the node's object store, which grows with the machine, not the input.
    object_store_bytes: int = 1 << 30


@dataclass
class SearchParam:
    """One dimension of a sweep: a dotted config key and how to draw its value."""

    path: str = MISSING  # e.g. meta.inner_optimizer.lr
    kind: str = "choice"  # choice | loguniform | uniform | randint
    choices: list[Any] = field(default_factory=list)  # choice
    low: float = 0.0  # loguniform, uniform, randint (inclusive)
    high: float = 0.0  # loguniform, uniform, randint (exclusive for randint)


@dataclass
class TuneConfig:
    """Ray Tune sweeps (configs/tune/). Every budget gets `num_samples` trials, so the result
    is a best config per anomaly-shot budget, not a single winner."""

    name: str = "sweep"
    budgets: list[int] = field(default_factory=lambda: [5, 10, 50])  # meta.budget, grid-searched
    space: list[SearchParam] = field(default_factory=list)
    num_samples: int = 4  # random draws of `space` per budget
    max_concurrent_trials: int = 2
    trainable: str = "local"  # local: one process per trial | ray: a Ray Train run per trial
    cpus_per_trial: float = 1.0
    scheduler: str = "asha"  # asha | fifo
    grace_period: int = 1  # validation reports before ASHA may stop a trial
    reduction_factor: int = 2
    seed: int = 0  # of the search algorithm's draws


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    seed: int = 0
    run: Optional[str] = None  # run name under storage.root; default <data.name>-seed<seed>
    overwrite: bool = False  # train: replace a finished run of the same name (an unfinished one resumes)
    output: Optional[str] = None  # prepare: destination folder; score: output folder (or one .parquet file)
    input: Optional[str] = None  # score: a table, or a folder / s3:// prefix of CSV and Parquet files
    quiet: bool = False


SCHEMA_NAME = "metaad_schema"


def plain(section):
    """A config section as its plain dataclass (e.g. MetaConfig), for code that reads it per step:
    an OmegaConf attribute costs ~17 us, about 7% of a CPU episode step across its ~25 reads."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_object(section) if isinstance(section, DictConfig) else section


def register_configs() -> None:
    """Register the schema once so `configs/config.yaml` can build on it."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


def apply_overrides(cfg, overrides: Sequence[str]):
    """key=value overrides on a config, parsed as on the command line (lists, numbers, quoting);
    a mistake is one ConfigError line naming the key. Here, not in the CLI, because the in-memory
    estimator takes the same overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        for override in OverridesParser.create().parse_overrides(list(overrides)):
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False)
    except Exception as exc:  # noqa: BLE001 - Hydra parse and OmegaConf validation errors
        raise ConfigError(one_line(exc)) from None
    return cfg
