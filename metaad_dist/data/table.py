"""An in-memory table of feature rows labelled by family: what every data source yields."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from metaad_dist.errors import DataError


@dataclass
class FamilyTable:
    """Rows of float32 features, each with its family, a stable row id and an optional split.

    Row ids are stable across reads of the same dataset, so splits and budget pools drawn
    from them are the same whichever subset of families a reader opened.
    """

    features: np.ndarray  # (n, d) float32
    families: np.ndarray  # (n,) str
    row_ids: np.ndarray  # (n,) int64
    feature_names: list[str]
    split: Optional[np.ndarray] = None  # (n,) str in {"train", "test"} when the source has one

    def __post_init__(self) -> None:
        n = len(self.families)
        if self.features.shape[0] != n or self.row_ids.shape[0] != n:
            raise DataError(
                f"table rows disagree: {self.features.shape[0]} feature rows, {n} families, "
                f"{self.row_ids.shape[0]} row ids"
            )
        if self.features.shape[1] != len(self.feature_names):
            raise DataError(
                f"table has {self.features.shape[1]} feature columns but {len(self.feature_names)} names"
            )

    def __len__(self) -> int:
        return len(self.families)

    def select(self, mask: np.ndarray) -> "FamilyTable":
        return FamilyTable(
            features=self.features[mask],
            families=self.families[mask],
            row_ids=self.row_ids[mask],
            feature_names=self.feature_names,
            split=None if self.split is None else self.split[mask],
        )


FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_float32(values) -> np.ndarray:
    """float32 features from numbers; a value beyond float32's range becomes +-inf without
    numpy's overflow warning, so that the caller's own finiteness check says what went wrong."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float32)


def numeric_features(
    columns: Mapping[str, Sequence], names: Sequence[str], where: str
) -> np.ndarray:
    """Stack named columns as float32, or fail naming the first non-numeric column and value."""
    out = []
    for name in names:
        values = np.asarray(columns[name])
        if values.dtype.kind in "biuf":
            out.append(to_float32(values))
            continue
        try:
            out.append(to_float32(values))
        except (TypeError, ValueError):
            bad = next(v for v in values if not _is_number(v))
            raise DataError(
                f"{where}: column '{name}' is not numeric (value {bad!r}); "
                "declare it in data.source.categorical_columns or data.source.drop_columns"
            ) from None
    if not out:
        return np.zeros((len(next(iter(columns.values()), [])), 0), dtype=np.float32)
    return np.stack(out, axis=1)


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
