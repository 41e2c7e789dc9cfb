"""The search space of configs/tune/ as Ray Tune sampling objects, validated against the schema."""
from __future__ import annotations

from omegaconf import OmegaConf
from ray import tune

from metaad_dist.config import Config
from metaad_dist.errors import ConfigError

BUDGET_KEY = "meta.budget"
KINDS = ("choice", "loguniform", "uniform", "randint")


def _exists(cfg, path: str) -> bool:
    node = cfg
    for part in path.split("."):
        if not OmegaConf.is_dict(node) or part not in node:
            return False
        node = node[part]
    return not OmegaConf.is_dict(node)


def _check_value(typed, key: str, path: str, value) -> None:
    """A value the space can draw must fit the schema's type at `path`: trials apply it to a
    typed config (apply_params), where a mismatch would fail every trial with a traceback."""
    from omegaconf.errors import ValidationError

    try:
        OmegaConf.update(typed, path, value, merge=False)
    except ValidationError as exc:
        why = str(exc).splitlines()[0]  # e.g. "Value 'abc' of type 'str' could not be converted to Integer"
        raise ConfigError(f"{key}: {value!r} does not fit {path} ({why})") from None


def build_param_space(cfg) -> dict:
    """{dotted key: tune sampler}, plus a grid over the anomaly-shot budgets."""
    typed = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg))
    space = cfg.tune.space
    if not space:
        raise ConfigError("tune.space is empty; expected at least one {path, kind, ...} entry to sweep")
    if not cfg.tune.budgets:
        raise ConfigError("tune.budgets is empty; expected at least one anomaly-shot budget, e.g. [5, 10, 50]")
    params: dict = {}
    for i, p in enumerate(space):
        key = f"tune.space[{i}]"
        if not _exists(cfg, p.path) or p.path.startswith(("tune.", "hydra.")):
            raise ConfigError(f"{key}.path='{p.path}' is not a config key; expected e.g. meta.inner_optimizer.lr")
        if p.path == BUDGET_KEY:
            raise ConfigError(f"{key}.path='{BUDGET_KEY}': budgets are swept by tune.budgets, not the space")
        if p.kind not in KINDS:
            raise ConfigError(f"{key}.kind='{p.kind}'; expected one of {list(KINDS)}")
        if p.kind == "choice":
            if not p.choices:
                raise ConfigError(f"{key}.choices is empty; a choice needs at least one value")
            for value in p.choices:
                _check_value(typed, f"{key}.choices", p.path, value)
            params[p.path] = tune.choice(list(p.choices))
            continue
        if not p.low < p.high or (p.kind == "loguniform" and p.low <= 0):
            raise ConfigError(f"{key}: low={p.low}, high={p.high}; expected 0 < low < high for {p.kind}")
        _check_value(typed, f"{key} ({p.kind})", p.path, int(p.low) if p.kind == "randint" else float(p.low))
        sampler = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}[p.kind]
        params[p.path] = sampler(int(p.low), int(p.high)) if p.kind == "randint" else sampler(p.low, p.high)
    params[BUDGET_KEY] = tune.grid_search(list(cfg.tune.budgets))
    return params


def apply_params(cfg, params: dict):
    """A typed copy of cfg with the trial's values; k_shot is capped by the trial's budget.

    Typed (the Config schema under it), so that sections read per step become their dataclasses
    (config.plain) and a trial value of the wrong type fails like a command-line override."""
    trial = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg))
    for path, value in params.items():
        OmegaConf.update(trial, path, value, merge=False)
    trial.meta.k_shot = min(trial.meta.k_shot, trial.meta.budget)
    return trial
