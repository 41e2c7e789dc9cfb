"""`metaad train`: train with the configured trainer (local loop or Ray Train) and save the run."""
from __future__ import annotations

from metaad_dist.errors import ConfigError
from metaad_dist.train.commands import final_line, run_name, train_local_run

TRAINERS = ("local", "ray")


def train_command(cfg) -> None:
    if cfg.trainer.name not in TRAINERS:
        raise ConfigError(f"trainer.name='{cfg.trainer.name}'; expected one of {list(TRAINERS)}")
    if cfg.trainer.name == "ray":
        from metaad_dist.train.ray_trainer import train_ray

        result = train_ray(cfg)
        metrics, location_uri, resumed_at = result.metrics, result.location_uri, result.resumed_at
    else:
        metrics, location_uri, resumed_at = train_local_run(cfg)
    if not cfg.quiet:
        print(final_line(run_name(cfg), location_uri, metrics, resumed_at))
