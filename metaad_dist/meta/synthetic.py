"""Synthetic anomalies for the outer loop: normal rows pushed off the normal manifold.

Why: the shots teach the head how the *seen* families leave normal data, and a family that
leaves it along other features, or the same features the other way, is missed (the network
alone ranks NSL-KDD's DoS below normal rows in a leave-one-meta-family-out fold,
benchmarks/README.md, fusion grid). Rows that depart from normal data on a random subset of
features, by a random amount in either direction, are shots of no family in particular: they
ask the head to flag departure itself. It is the negative sampling of DROCC (Goyal et al.,
"DROCC: Deep Robust One-Class Classification", ICML 2020: points at distance r..gamma*r from
the normal data are anomalies) and the auxiliary-outlier idea of outlier exposure (Hendrycks et
al., "Deep Anomaly Detection with Outlier Exposure", ICLR 2019), on tabular rows.

A pure function of the episode's normal rows and a seed key, so every worker and the one-process
loop draw the same rows for the same episode (docs/method.md section 6's equivalence).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from metaad_dist.errors import ConfigError


def check_synthetic(count: int, fraction: float, scale: Sequence[float]) -> None:
    if count < 0:
        raise ConfigError(f"meta.synthetic_shots={count}; expected an integer >= 0 (0 = off)")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"meta.synthetic_fraction={fraction}; expected a share of the features in (0, 1]")
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1]:
        raise ConfigError(f"meta.synthetic_scale={list(scale)}; expected [low, high] with 0 < low <= high "
                          "(shifts in normal standard deviations)")


def synthetic_anomalies(normal_x: np.ndarray, count: int, fraction: float, scale: Sequence[float],
                        key: Sequence[int]) -> np.ndarray:
    """`count` rows of `normal_x`, each shifted on a random `fraction` of its features (at least
    one that varies) by +-U(scale) standard deviations of that feature among `normal_x`.

    The shift is in the feature's own spread, so it means the same under every scaler, and a
    feature constant among the normal rows (a one-hot column never set) is left alone."""
    rng = np.random.default_rng(list(key))
    rows, features = normal_x.shape
    spread = normal_x.std(axis=0)
    base = normal_x[rng.integers(0, rows, count)]
    chosen = rng.random((count, features)) < fraction
    movable = np.flatnonzero(spread > 0)
    if movable.size:  # the one feature every row departs on is one that can move
        chosen[np.arange(count), movable[rng.integers(0, movable.size, count)]] = True
    size = rng.uniform(scale[0], scale[1], (count, features)) * rng.choice([-1.0, 1.0], (count, features))
    return (base + chosen * size * spread).astype(normal_x.dtype, copy=False)
