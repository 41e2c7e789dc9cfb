"""Raw columns -> float32 feature columns, in one fixed order recorded in the manifest.

Numeric columns pass through as float32. Categorical columns are one-hot encoded (one column
`name=value` per category, unseen values all-zero) or index encoded (one column, known values
1..K, unseen 0). Categories are learned from the train files only. The same encoder, rebuilt
from a manifest, encodes new raw tables (e.g. for scoring) exactly as prepare did.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from metaad_dist.data.table import to_float32
from metaad_dist.errors import ConfigError, DataError

ENCODINGS = ("onehot", "index")


class FeatureEncoder:
    def __init__(self, columns: Sequence[str], categories: dict[str, list[str]], encoding: str):
        if encoding not in ENCODINGS:
            raise ConfigError(f"data.source.categorical_encoding='{encoding}'; expected one of {list(ENCODINGS)}")
        self.columns = list(columns)  # source columns that become features, in source order
        self.categories = {c: list(v) for c, v in categories.items()}
        self.encoding = encoding
        self._value_sets = {c: pa.array(v, pa.string()) for c, v in self.categories.items()}
        self.features: list[dict[str, Any]] = []
        for column in self.columns:
            if column not in self.categories:
                self.features.append({"name": column, "dtype": "float32", "column": column, "kind": "numeric"})
            elif encoding == "onehot":
                self.features += [
                    {"name": f"{column}={value}", "dtype": "float32", "column": column, "kind": "onehot", "category": value}
                    for value in self.categories[column]
                ]
            else:
                self.features.append({"name": column, "dtype": "float32", "column": column, "kind": "index"})
        names = [f["name"] for f in self.features]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise DataError(f"feature name '{dup}' occurs twice after encoding; rename the source column")

    @property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.features]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> "FeatureEncoder":
        columns: list[str] = []
        for f in manifest["features"]:
            if f["column"] not in columns:
                columns.append(f["column"])
        return cls(columns, manifest.get("categories", {}), manifest.get("categorical_encoding", "onehot"))

    def encode(self, batch: pa.RecordBatch | pa.Table) -> tuple[list[np.ndarray], dict[str, int]]:
        """Feature columns (float32, NaN for missing numbers) and per column counts of unseen categories."""
        out: list[np.ndarray] = []
        unseen: dict[str, int] = {}
        n = batch.num_rows
        for column in self.columns:
            values = batch.column(column)
            if column not in self.categories:
                array = values.to_numpy(zero_copy_only=False) if values.null_count == 0 else pc.fill_null(
                    values.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
                out.append(to_float32(array))
                continue
            codes = pc.index_in(values.cast(pa.string()), value_set=self._value_sets[column])
            codes = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)
            missing = int((codes < 0).sum())
            if missing:
                unseen[column] = missing
            if self.encoding == "index":
                out.append((codes + 1).astype(np.float32))
                continue
            k = len(self.categories[column])
            onehot = np.zeros((k, n), dtype=np.float32)
            seen = codes >= 0
            onehot[codes[seen], np.flatnonzero(seen)] = 1.0
            out.extend(onehot)
        return out, unseen

    def encode_matrix(self, table: pa.Table) -> tuple[np.ndarray, dict[str, int]]:
        """A raw table (with the manifest's source columns) as an (n, d) float32 matrix, and
        per categorical column the count of rows with a category unseen in the train files."""
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise DataError(
                f"table lacks {len(missing)} of the dataset's source columns (first: {missing[:3]})"
            )
        types = {c: (pa.string() if c in self.categories else pa.float64()) for c in self.columns}
        try:
            table = table.select(self.columns).cast(pa.schema([(c, types[c]) for c in self.columns]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"table: cannot convert source columns ({str(exc).splitlines()[0]})") from None
        columns, unseen = self.encode(table)
        if not columns:
            return np.zeros((table.num_rows, 0), dtype=np.float32), unseen
        return np.stack(columns, axis=1), unseen
