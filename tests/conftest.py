"""Shared fixtures. Tests run against real components: a local Ray instance, real Parquet
files and a real S3-compatible server on 127.0.0.1."""
from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def compose():
    """Compose the real config tree with Hydra overrides, as the CLI does."""
    from metaad_dist.cli import compose_config

    def _compose(*overrides: str):
        cfg = compose_config(list(overrides))
        OmegaConf.set_struct(cfg, True)
        return cfg

    return _compose
