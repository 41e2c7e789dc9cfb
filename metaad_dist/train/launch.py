"""`metaad train`: train with the configured trainer (local loop or Ray Train) and save the run."""
from __future__ import annotations

from metaad_dist.errors import ConfigError
from metaad_dist.train.api import fit
from metaad_dist.train.commands import WRITE_CHECK, run_location, run_name, save_trained_run

TRAINERS = ("local", "ray")


def train_command(cfg) -> None:
    if cfg.trainer.name not in TRAINERS:
        raise ConfigError(f"trainer.name='{cfg.trainer.name}'; expected one of {list(TRAINERS)}")
    if cfg.trainer.name == "ray":
        from metaad_dist.train.ray_trainer import train_ray

        result = train_ray(cfg)
        metrics, location_uri = result.metrics, result.location_uri
    else:
        location = run_location(cfg)
        location.write_bytes_atomic(b"", WRITE_CHECK)  # an unwritable storage.root fails now, not after training
        location.delete(WRITE_CHECK)
        result = fit(cfg)
        metrics = save_trained_run(cfg, location, result.trained, result.setup, result.history, result.seconds)
        location_uri = location.uri
    if not cfg.quiet:
        val = metrics["final"].get("val_auroc")
        print(
            f"saved run '{run_name(cfg)}' to {location_uri} ({cfg.meta.episodes} episodes in {metrics['seconds']:.1f}s"
            + (f", validation AUROC {val:.3f})" if val is not None else ")")
        )
