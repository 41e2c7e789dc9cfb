"""Built-in datasets, no download: scikit-learn's handwritten digits and a synthetic table.

digits (configs/data/digits.yaml): ten families; 0-4 normal, 5-6 meta (a few labelled shots
each), 7 validation (model selection only), 8-9 held out (the unseen families).

synthetic (configs/data/synthetic.yaml): a tabular dataset generated on the fly, always the same
rows. Why it exists: digits cannot show what labelled shots of some families teach about unseen
ones (the inner loop alone already separates unseen digits). Here every anomaly family deviates
from normal rows along one direction shared by all anomaly families plus one of its own, within
the normal rows' own spread: one-class scores see a small deviation, shots of a few families
reveal the shared one. It demonstrates that mechanism and is no evidence about real data.
"""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from metaad_dist.data.table import FamilyTable

BUILTIN_PREFIX = "builtin:"

SYNTHETIC_SEED = 20260121  # fixed: the dataset is one table; the run's seed only splits it
SYNTHETIC_DIMS = (8, 16)  # cluster features, then deviation features
SYNTHETIC_NORMAL = (("n0", 1500), ("n1", 1500), ("n2", 1500))
SYNTHETIC_ANOMALY = tuple((f"a{i}", 300) for i in range(8))
SYNTHETIC_SHIFT = 2.0  # length of an anomaly family's deviation, in normal standard deviations


def _digits() -> FamilyTable:
    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    return FamilyTable(
        features=x,
        families=bunch.target.astype(str),
        row_ids=np.arange(len(x), dtype=np.int64),
        feature_names=[f"pixel_{i}" for i in range(x.shape[1])],
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _synthetic() -> FamilyTable:
    """Normal families: Gaussian clusters in the first features, unit noise in the rest. An
    anomaly family: rows drawn like normal ones (from a random normal cluster) plus
    SYNTHETIC_SHIFT along unit(shared + own), `shared` common to all anomaly families."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    cluster_dims, deviation_dims = SYNTHETIC_DIMS
    centres = rng.normal(0.0, 3.0, (len(SYNTHETIC_NORMAL), cluster_dims))
    shared = _unit(rng.normal(size=deviation_dims))

    def normal_like(n: int, cluster: np.ndarray) -> np.ndarray:
        return np.hstack([centres[cluster] + rng.normal(size=(n, cluster_dims)), rng.normal(size=(n, deviation_dims))])

    parts, names = [], []
    for k, (family, n) in enumerate(SYNTHETIC_NORMAL):
        parts.append(normal_like(n, np.full(n, k)))
        names += [family] * n
    for family, n in SYNTHETIC_ANOMALY:
        shift = SYNTHETIC_SHIFT * _unit(shared + _unit(rng.normal(size=deviation_dims)))
        rows = normal_like(n, rng.integers(0, len(SYNTHETIC_NORMAL), n))
        rows[:, cluster_dims:] += shift
        parts.append(rows)
        names += [family] * n
    x = np.vstack(parts).astype(np.float32)
    return FamilyTable(
        features=x,
        families=np.array(names),
        row_ids=np.arange(len(x), dtype=np.int64),
        feature_names=[f"c{i}" for i in range(cluster_dims)] + [f"d{i}" for i in range(deviation_dims)],
    )


BUILTINS = {"digits": _digits, "synthetic": _synthetic}


def load_builtin(name: str) -> FamilyTable:
    if name not in BUILTINS:
        from metaad_dist.errors import ConfigError

        raise ConfigError(
            f"data.path: unknown built-in dataset '{BUILTIN_PREFIX}{name}'; expected one of "
            f"{[BUILTIN_PREFIX + b for b in BUILTINS]}"
        )
    return BUILTINS[name]()
