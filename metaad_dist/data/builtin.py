"""The built-in dataset: scikit-learn's handwritten digits, ten families, no download.

Default split (configs/data/digits.yaml): digits 0-4 are normal, 5-6 meta (a few labelled
shots each), 7 validation (model selection only), 8-9 held out (the unseen families).
"""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from metaad_dist.data.table import FamilyTable

BUILTIN_PREFIX = "builtin:"


def load_builtin(name: str) -> FamilyTable:
    if name != "digits":
        from metaad_dist.errors import ConfigError

        raise ConfigError(f"data.path: unknown built-in dataset '{BUILTIN_PREFIX}{name}'; expected '{BUILTIN_PREFIX}digits'")
    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    return FamilyTable(
        features=x,
        families=bunch.target.astype(str),
        row_ids=np.arange(len(x), dtype=np.int64),
        feature_names=[f"pixel_{i}" for i in range(x.shape[1])],
    )
