"""`metaad tune`: a budget-aware Ray Tune sweep over the same trainer.

Each trial trains with its sampled settings and reports validation AUROC (validation
families only; held-out families are never read, and each trial reports its source's read
counters to prove it). ASHA stops weak trials early. The result is a best config per
anomaly-shot budget and the validation-AUROC-vs-budget curve, because more labels always
help and the question a user asks is how many to buy.
"""
from __future__ import annotations

import math
import posixpath
import tempfile
from pathlib import Path

from omegaconf import OmegaConf
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from metaad_dist.data.credentials import SECRET_KEYS, AwsSecrets
from metaad_dist.data.storage import open_location
from metaad_dist.errors import ConfigError
from metaad_dist.data.ray_instance import ensure_ray
from metaad_dist.tune.space import BUDGET_KEY, apply_params, build_param_space

METRIC = "val_auroc"
TRAINABLES = ("local", "ray")
TRIAL_DRIVER_CPUS = 0.01
SETTINGS_FILE = "sweep_config.yaml"  # the config a named sweep was started with


def rows_read(setup, families) -> int:
    """Rows this trial's source read from `families` (-1: the source keeps no counters)."""
    counters = getattr(setup.source, "rows_read", None)
    return int(sum(counters.get(f, 0) for f in families)) if counters is not None else -1


def run_ray_train_trial(cfg) -> None:
    """A Ray Train run per trial (STACK.md: a tiny function trainable that fits a TorchTrainer
    and forwards its workers' reports to Tune). Every report is a validation report."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from metaad_dist.train.ray_trainer import train_ray

    cfg.trainer.name = "ray"
    cfg.trainer.log_every = cfg.trainer.validate_every
    cfg.trainer.checkpoint_every = 0  # at the end only: trials are short and ASHA may stop them
    cfg.run = f"trial-{tune.get_context().get_trial_id()}"
    cfg.storage.root = posixpath.join(sweep_path(cfg), cfg.tune.name, "runs")
    train_ray(cfg, callbacks=(TuneReportCallback(),))


def run_trial(params: dict, base: dict, secrets: AwsSecrets) -> None:
    """Function trainable: one training run, reporting each validation to Tune."""
    from metaad_dist.train.local import fit_network
    from metaad_dist.train.setup import prepare_training

    secrets.install()  # the driver's AWS keys, for S3 data and runs (see data/credentials.py)
    cfg = apply_params(OmegaConf.create(base), params)
    cfg.quiet = True
    if cfg.tune.trainable == "ray":
        return run_ray_train_trial(cfg)
    setup = prepare_training(cfg)

    def report(metrics: dict) -> None:
        tune.report({
            METRIC: metrics["val_auroc"],
            "episode": metrics["episode"],
            "budget": cfg.meta.budget,
            "held_out_rows_read": rows_read(setup, setup.roles.held_out),
            "trainable_rows_read": rows_read(setup, setup.roles.trainable),
        })

    # Trials select on the network's validation AUROC: no normal memory to fill or fuse.
    fit_network(cfg, setup, on_validation=report)


def check_tune_config(cfg) -> None:
    if cfg.tune.trainable not in TRAINABLES:
        raise ConfigError(f"tune.trainable='{cfg.tune.trainable}'; expected one of {list(TRAINABLES)}")
    if not cfg.data.validation:
        raise ConfigError("data.validation is empty; a sweep selects on validation families, so name at least one")
    if cfg.tune.scheduler not in ("asha", "fifo"):
        raise ConfigError(f"tune.scheduler='{cfg.tune.scheduler}'; expected 'asha' or 'fifo'")
    if cfg.trainer.validate_every < 1:
        raise ConfigError(f"trainer.validate_every={cfg.trainer.validate_every}; a sweep ranks trials by their "
                          "validation reports, expected an integer >= 1")
    if cfg.tune.scheduler == "asha":
        if cfg.tune.reduction_factor < 2:
            raise ConfigError(f"tune.reduction_factor={cfg.tune.reduction_factor}; expected an integer >= 2")
        if not 1 <= cfg.tune.grace_period <= max_reports(cfg):
            raise ConfigError(
                f"tune.grace_period={cfg.tune.grace_period}; expected 1 to {max_reports(cfg)}, the validation "
                f"reports of a trial (meta.episodes={cfg.meta.episodes} / trainer.validate_every={cfg.trainer.validate_every})"
            )


def max_reports(cfg) -> int:
    """An upper bound on a trial's validation reports (one every validate_every episodes, one at
    the end; under Ray Train the last step may cross one more multiple): ASHA's max_t, so that no
    trial is stopped for reaching Ray's default of 100 iterations."""
    return math.ceil(cfg.meta.episodes / cfg.trainer.validate_every) + 1


def sweep_settings(cfg) -> str:
    """The resolved config a sweep was started with (minus output verbosity), as YAML."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("quiet", None)
    return OmegaConf.to_yaml(settings)


def sweep_path(cfg) -> str:
    """Where named sweeps live: <storage.root>/tune, a local folder or s3://bucket/prefix."""
    root = str(cfg.storage.root)
    if root.startswith("s3://"):
        return posixpath.join(root.rstrip("/"), "tune")
    return str(Path(root).resolve() / "tune")


def sweep_location(cfg, *parts: str):
    """A storage Location under this sweep's folder (<storage.root>/tune/<tune.name>/...)."""
    return open_location(posixpath.join(sweep_path(cfg), cfg.tune.name, *parts), cfg.storage)


def claim_sweep_name(cfg) -> None:
    """Record the config under the sweep's folder, or check that a rerun uses the same one:
    restoring a finished experiment reruns nothing, so a changed config under an old name
    would silently get the old trials back."""
    folder, settings = sweep_location(cfg), sweep_settings(cfg)
    if folder.exists(SETTINGS_FILE):
        if folder.read_bytes(SETTINGS_FILE).decode() != settings:
            raise ConfigError(
                f"tune.name='{cfg.tune.name}': {folder.uri} holds a sweep run with another config; choose a new "
                "tune.name, or delete that folder to start it over"
            )
        return
    folder.write_bytes_atomic(settings.encode(), SETTINGS_FILE)


def keep_aws_keys_out_of_trial_runtime_envs() -> None:
    """Ray Tune copies AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / session tokens from the
    driver's environment into every trainable's runtime env (Ray 2.60:
    ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE), and Ray logs runtime envs. Trials
    get the keys as AwsSecrets instead (run_trial), so they are dropped from that set."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = class_cache.ENV_VARS_TO_PROPAGATE - {*SECRET_KEYS, "AWS_SECURITY_TOKEN"}


def _tuner(cfg, budget: int, param_space: dict, base: dict) -> tune.Tuner:
    """One Tuner per budget: ASHA compares trials of the same budget only, and every budget
    keeps its own best trial (more labels always help, so budgets must not compete)."""
    # A Ray Train trial's driver only waits on its TorchTrainer, whose workers hold the CPUs.
    cpus = TRIAL_DRIVER_CPUS if cfg.tune.trainable == "ray" else cfg.tune.cpus_per_trial
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, secrets=AwsSecrets.from_environ()), {"cpu": cpus})
    name = f"budget_{budget}"
    # The experiment folder <sweep>/<tune.name>/budget_<b>, local or on S3. The filesystem has no
    # keys of its own (Tune pickles it into the experiment state); it finds the AWS chain.
    location = sweep_location(cfg, name)
    storage_path, filesystem = posixpath.dirname(location.base.rstrip("/")), location.fs
    path = posixpath.join(storage_path, name)
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):  # an interrupted sweep continues
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=param_space, storage_filesystem=filesystem)
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", grace_period=cfg.tune.grace_period,
                      reduction_factor=cfg.tune.reduction_factor, max_t=max_reports(cfg))
        if cfg.tune.scheduler == "asha" else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", scheduler=scheduler, num_samples=cfg.tune.num_samples,
            # The generator's own cap: TuneConfig.max_concurrent_trials ignores a SearchGenerator.
            search_alg=BasicVariantGenerator(random_state=cfg.tune.seed + budget,
                                             max_concurrent=cfg.tune.max_concurrent_trials),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem, verbose=0),
    )


def run_sweep(cfg) -> list:
    """Run (or continue) the sweep named cfg.tune.name; returns one ResultGrid per budget."""
    check_tune_config(cfg)
    param_space = build_param_space(cfg)
    budgets = param_space.pop(BUDGET_KEY)["grid_search"]
    claim_sweep_name(cfg)
    ensure_ray()
    keep_aws_keys_out_of_trial_runtime_envs()
    grids = []
    for budget in budgets:
        base = OmegaConf.to_container(cfg, resolve=True)
        base["meta"]["budget"] = budget
        grids.append(_tuner(cfg, budget, param_space, base).fit())
    return grids


def tune_command(cfg) -> None:
    from metaad_dist.tune.results import trial_rows, write_outputs

    rows = [row for budget, grid in zip(cfg.tune.budgets, run_sweep(cfg))
            for row in trial_rows(grid, cfg.meta.episodes, budget)]
    report = sweep_location(cfg, "report")
    with tempfile.TemporaryDirectory(prefix="metaad-tune-") as tmp:
        local = report.base if not report.is_s3 else tmp  # on S3: written here, then uploaded
        out = write_outputs(rows, cfg, Path(local), report.uri)
        if report.is_s3:
            for path in sorted(Path(tmp).iterdir()):
                report.write_bytes_atomic(path.read_bytes(), path.name)
    print(f"{len(rows)} trials; validation AUROC by budget (best completed trial):")
    for budget, row in sorted(out["best"].items()):
        print(f"  budget {budget:>4}: {row['val_auroc']:.4f}  -> {out['exported'][budget]}")
    print(f"results: {report.uri}/results.md, results.csv, budget_curve.png")
