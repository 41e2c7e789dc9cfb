"""`metaad <command> [key=value ...]`: the recipes, each driven by one Hydra config tree.

Hydra's compose API parses the overrides against the structured schema (so unknown keys and
ill-typed values are rejected); this module only picks the command and turns user mistakes
into one-line errors.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from metaad_dist.errors import PROG, ConfigError, UserError, first_line, one_line


def config_dir() -> Path:
    """configs/ beside the package (editable install, Ray job working_dir) or METAAD_CONFIG_DIR."""
    override = os.environ.get("METAAD_CONFIG_DIR")
    path = Path(override) if override else Path(__file__).resolve().parent.parent / "configs"
    if not (path / "config.yaml").is_file():
        raise UserError(f"config tree not found at {path}; set METAAD_CONFIG_DIR to the repository's configs/ folder")
    return path


def _cmd_prepare(cfg) -> None:
    from metaad_dist.data.prepare import prepare_command

    prepare_command(cfg)


def _cmd_train(cfg) -> None:
    from metaad_dist.train.launch import train_command

    train_command(cfg)


def _cmd_tune(cfg) -> None:
    from metaad_dist.tune.sweep import tune_command

    tune_command(cfg)


def _cmd_evaluate(cfg) -> None:
    from metaad_dist.eval.evaluate import evaluate_command

    evaluate_command(cfg)


def _cmd_score(cfg) -> None:
    from metaad_dist.eval.score_command import score_command

    score_command(cfg)


COMMANDS: dict[str, tuple[Callable, str]] = {
    "prepare": (_cmd_prepare, "raw tables -> Parquet shards + manifest.json (local folder or s3://)"),
    "train": (_cmd_train, "meta-train on a dataset's normal and meta families; saves the run"),
    "tune": (_cmd_tune, "Ray Tune sweep (configs/tune/): best config per anomaly-shot budget"),
    "evaluate": (_cmd_evaluate, "score held-out families with a trained run and its baselines; prints a table"),
    "score": (_cmd_score, "score a new table (CSV or Parquet) with a trained run into Parquet"),
}


def _config_groups() -> dict[str, list[str]]:
    root = config_dir()
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(("_", "."))
    }


def version_line() -> str:
    """The package version and the versions of what trains with it (bug reports need all three)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return f"{PROG} {of('metaad-dist')} (ray {of('ray')}, torch {of('torch')}, Python {sys.version.split()[0]})"


def usage() -> str:
    lines = [f"usage: {PROG} <command> [--config FILE] [key=value ...] [--cfg]  |  {PROG} --version", "", "commands:"]
    lines += [f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "config groups (choose with group=option, e.g. data=digits):"]
    lines += [f"  {group:<10} {', '.join(options)}" for group, options in _config_groups().items()]
    lines += [
        "",
        "Any setting can be overridden, e.g.",
        f"  {PROG} train data=digits meta.inner_steps=5 seed=3",
        f"  {PROG} train --cfg     # print the resolved config and exit",
        f"  {PROG} train --config sweep/best_budget_10.yaml   # a whole config file (e.g. exported by tune)",
    ]
    return "\n".join(lines)


def compose_config(overrides: list[str], config_file: str | None = None):
    """The config tree with overrides; with `config_file`, that file replaces the defaults and
    the overrides (key=value only) apply on top of it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from metaad_dist.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    _check_override_kinds(overrides)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=PROG):
            if config_file is None:
                return compose(config_name="config", overrides=overrides)
            return _apply_overrides(_merge_file(compose(config_name="config"), config_file), overrides)
    except UserError:
        raise
    except Exception as exc:  # Hydra/OmegaConf parse and composition errors are user mistakes
        raise UserError(one_line(exc)) from None


def _check_override_kinds(overrides: list[str]) -> None:
    """Only key=value settings of schema keys (and group choices): Hydra's +key / ++key would add
    keys the schema lacks (a typo trains with the default, silently) and ~key would delete one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:  # noqa: BLE001 - Hydra's parse errors span lines
        raise UserError(one_line(exc)) from None
    groups = set(_config_groups())
    for override in parsed:
        if override.key_or_group in groups:
            continue
        if override.is_add() or override.is_force_add():
            raise ConfigError(f"'{override.input_line}': adding keys is not supported; expected key=value for a key "
                              f"of the schema (run `{PROG} <command> --cfg` for valid keys)")
        if override.is_delete():
            raise ConfigError(f"'{override.input_line}': deleting keys is not supported; expected key=value")


def _merge_file(cfg, config_file: str):
    from omegaconf import OmegaConf

    path = Path(config_file)
    if not path.is_file():
        raise UserError(f"--config {config_file}: no such file")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - YAML syntax errors of a user file
        raise UserError(f"--config {config_file}: not valid YAML ({first_line(exc)})") from None
    try:
        return OmegaConf.merge(cfg, loaded)  # struct schema: unknown keys are rejected
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--config {config_file}: {one_line(exc)}") from None


def _apply_overrides(cfg, overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from metaad_dist.config import apply_overrides

    groups = set(_config_groups())
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key in groups:
            raise ConfigError(
                f"'{key}' is a config group, not a key; only key=value settings apply on top of a whole "
                "config (with --config, choose the group inside the file)"
            )
    return apply_overrides(cfg, overrides)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(usage())
            return 0
        if argv[0] in ("--version", "-V", "version"):
            print(version_line())
            return 0
        command, overrides = argv[0], argv[1:]
        if command not in COMMANDS:
            raise UserError(f"unknown command '{command}'; expected one of {list(COMMANDS)}")
        if "-h" in overrides or "--help" in overrides:
            print(f"{PROG} {command}: {COMMANDS[command][1]}\n")
            print(usage())
            return 0
        overrides = [a for o in overrides for a in (o.split("=", 1) if o.startswith("--config=") else [o])]
        unknown = [o for o in overrides if o.startswith("--") and o not in ("--cfg", "--config")]
        if unknown:
            raise UserError(f"unknown option '{unknown[0]}'; expected --config FILE, --cfg or key=value overrides")
        show = "--cfg" in overrides
        config_file = None
        if "--config" in overrides:
            i = overrides.index("--config")
            if i + 1 >= len(overrides):
                raise UserError("--config needs a file path")
            config_file = overrides[i + 1]
            overrides = overrides[:i] + overrides[i + 2:]
        cfg = compose_config([o for o in overrides if o != "--cfg"], config_file)
        if show:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        COMMANDS[command][0](cfg)
        return 0
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
