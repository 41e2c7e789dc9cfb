"""`metaad tune`: a budget-aware Ray Tune sweep over the same trainer.

Each trial trains with its sampled settings and reports validation AUROC (validation
families only; held-out families are never read, and each trial reports its source's read
counters to prove it). ASHA stops weak trials early. The result is a best config per
anomaly-shot budget and the validation-AUROC-vs-budget curve, because more labels always
help and the question a user asks is how many to buy.
"""
from __future__ import annotations

import os
from pathlib import Path

import ray
from omegaconf import OmegaConf
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from metaad_dist.errors import ConfigError
from metaad_dist.tune.space import BUDGET_KEY, apply_params, build_param_space

METRIC = "val_auroc"
TRAINABLES = ("local", "ray")
TRIAL_DRIVER_CPUS = 0.01


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
    cfg.storage.root = os.path.join(sweep_path(cfg), cfg.tune.name, "runs")
    train_ray(cfg, callbacks=(TuneReportCallback(),))


def run_trial(params: dict, base: dict) -> None:
    """Function trainable: one training run, reporting each validation to Tune."""
    from metaad_dist.train.local import fit_network
    from metaad_dist.train.setup import prepare_training

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


def sweep_path(cfg) -> str:
    root = cfg.storage.root
    if root.startswith("s3://"):
        raise ConfigError("storage.root on S3 is not supported by `metaad tune` yet; use a local folder")
    return str(Path(root).resolve() / "tune")


def _tuner(cfg, budget: int, param_space: dict, base: dict, storage_path: str) -> tune.Tuner:
    """One Tuner per budget: ASHA compares trials of the same budget only, and every budget
    keeps its own best trial (more labels always help, so budgets must not compete)."""
    # A Ray Train trial's driver only waits on its TorchTrainer, whose workers hold the CPUs.
    cpus = TRIAL_DRIVER_CPUS if cfg.tune.trainable == "ray" else cfg.tune.cpus_per_trial
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base), {"cpu": cpus})
    name = f"{cfg.tune.name}/budget_{budget}"
    path = os.path.join(storage_path, name)
    if tune.Tuner.can_restore(path):  # an interrupted sweep continues where it stopped
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=param_space)
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", grace_period=cfg.tune.grace_period,
                      reduction_factor=cfg.tune.reduction_factor)
        if cfg.tune.scheduler == "asha" else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", scheduler=scheduler, num_samples=cfg.tune.num_samples,
            max_concurrent_trials=cfg.tune.max_concurrent_trials,
            search_alg=BasicVariantGenerator(random_state=cfg.tune.seed + budget),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0),
    )


def run_sweep(cfg) -> list:
    """Run (or continue) the sweep named cfg.tune.name; returns one ResultGrid per budget."""
    check_tune_config(cfg)
    param_space = build_param_space(cfg)
    budgets = param_space.pop(BUDGET_KEY)["grid_search"]
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    grids = []
    for budget in budgets:
        base = OmegaConf.to_container(cfg, resolve=True)
        base["meta"]["budget"] = budget
        grids.append(_tuner(cfg, budget, param_space, base, sweep_path(cfg)).fit())
    return grids


def tune_command(cfg) -> None:
    from metaad_dist.tune.results import trial_rows, write_outputs

    rows = [row for budget, grid in zip(cfg.tune.budgets, run_sweep(cfg))
            for row in trial_rows(grid, cfg.meta.episodes, budget)]
    out = write_outputs(rows, cfg, Path(sweep_path(cfg)) / cfg.tune.name / "report")
    print(f"{len(rows)} trials; validation AUROC by budget (best completed trial):")
    for budget, row in sorted(out["best"].items()):
        print(f"  budget {budget:>4}: {row['val_auroc']:.4f}  -> {out['exported'][budget]}")
    print(f"results: {out['out_dir']}/results.md, results.csv, budget_curve.png")
