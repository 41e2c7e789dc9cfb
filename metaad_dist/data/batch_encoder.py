"""Raw record batches -> encoded, family-grouped Arrow tables for `metaad prepare`.

The same `BatchEncoder` runs in the serial prepare and in the Ray tasks of the parallel one
(data/parallel_read.py), so both produce identical shards; everything an `EncodedBatch` holds is
picklable, and the statistics of the normal training rows are partial sums that merge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from metaad_dist.config import DataConfig, SourceConfig
from metaad_dist.data.encoding import FeatureEncoder
from metaad_dist.data.manifest import RAW_LABEL, ROW_ID, SPLIT
from metaad_dist.data.raw_files import RawFile
from metaad_dist.errors import DataError


class RunningStats:
    """count / mean / std / min / max per feature, accumulated in float64."""

    def __init__(self, d: int):
        self.count = 0
        self.sum = np.zeros(d)
        self.sumsq = np.zeros(d)
        self.min = np.full(d, np.inf)
        self.max = np.full(d, -np.inf)

    def update(self, columns: list[np.ndarray], mask: np.ndarray) -> None:
        n = int(mask.sum())
        if n == 0:
            return
        self.count += n
        for j, column in enumerate(columns):
            values = column[mask].astype(np.float64)
            self.sum[j] += values.sum()
            self.sumsq[j] += np.square(values).sum()
            self.min[j] = min(self.min[j], values.min())
            self.max[j] = max(self.max[j], values.max())

    def merge(self, other: Optional["RunningStats"]) -> None:
        if other is None or other.count == 0:
            return
        self.count += other.count
        self.sum += other.sum
        self.sumsq += other.sumsq
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)

    def to_json(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0}
        mean = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - mean ** 2, 0.0)
        return {
            "count": self.count,
            "mean": mean.tolist(),
            "std": np.sqrt(var).tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
        }


class FamilyLabels:
    """Family labels of a batch -> family names, through the optional label map."""

    def __init__(self, src: SourceConfig, label_map: Optional[dict[str, str]], label_map_uri: Optional[str]):
        self.src = src
        self.label_map = label_map
        self.label_map_uri = label_map_uri

    def resolve(self, column: pa.Array, raw: RawFile, first_row: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(index per row into `names`, raw label index per row into `labels`, names) for one batch."""
        encoded = pc.dictionary_encode(column)
        labels = encoded.dictionary.to_pylist()
        indices = encoded.indices
        if indices.null_count:
            row = first_row + int(np.flatnonzero(pc.is_null(indices).to_numpy(zero_copy_only=False))[0]) + 1
            raise DataError(
                f"{raw.key}: {raw.uri}: data row {row} has no value in family column '{self.src.family_column}'"
            )
        codes = indices.to_numpy(zero_copy_only=False)
        cleaned = []
        for i, label in enumerate(labels):
            label = label.strip()
            suffix = self.src.label_strip_suffix
            if suffix and label.endswith(suffix):
                label = label[: -len(suffix)]
            if not label:
                row = first_row + int(np.flatnonzero(codes == i)[0]) + 1
                raise DataError(
                    f"{raw.key}: {raw.uri}: data row {row} has an empty value in family column '{self.src.family_column}'"
                )
            cleaned.append(label)
        names = cleaned
        if self.label_map is not None:
            missing = [label for label in cleaned if label not in self.label_map]
            if missing:
                raise DataError(
                    f"data.source.label_map {self.label_map_uri}: label '{missing[0]}' (in {raw.uri}) has no entry; "
                    f"add a row '{missing[0]},<family>'"
                )
            names = [self.label_map[label] for label in cleaned]
        return codes, np.asarray(cleaned, dtype=object), names


@dataclass
class EncodedBatch:
    """One raw batch, encoded: what the shard writer needs, and all it needs (picklable, so Ray
    tasks can produce it; see data/parallel_read.py)."""

    split: str
    rows: int  # data rows read, kept or not: row ids advance by this much
    table: pa.Table  # kept rows grouped by family; row ids 0..rows-1 relative to this batch
    families: list[str]  # family of each group, in table order
    seen: np.ndarray  # rows per family read
    kept: np.ndarray  # rows per family kept (finite)
    stats: Optional[RunningStats]  # of this batch's training rows of normal families
    unseen: dict[str, int]  # test rows with categories unseen in the train files


class BatchEncoder:
    """Raw record batch -> EncodedBatch: family resolution, feature encoding, finiteness, grouping."""

    def __init__(self, data: DataConfig, encoder: FeatureEncoder, families: "FamilyLabels", has_split: bool,
                 keep_raw_label: bool):
        self.encoder, self.families = encoder, families
        self.has_split, self.keep_raw_label = has_split, keep_raw_label
        self.family_column = families.src.family_column
        self.nonfinite_policy = data.source.nonfinite_policy
        self.normal = set(str(f) for f in data.normal)
        fields = [pa.field(ROW_ID, pa.int64())]
        if has_split:
            fields.append(pa.field(SPLIT, pa.string()))
        if keep_raw_label:
            fields.append(pa.field(RAW_LABEL, pa.string()))
        fields += [pa.field(name, pa.float32()) for name in encoder.feature_names]
        self.schema = pa.schema(fields)

    def encode(self, raw: RawFile, batch: pa.RecordBatch, file_row: int) -> EncodedBatch:
        """`file_row`: 0-based data row of the batch's first row in its file (for error messages)."""
        n = batch.num_rows
        codes, labels, names = self.families.resolve(batch.column(self.family_column), raw, file_row)
        columns, unseen = self.encoder.encode(batch)
        finite = np.ones(n, dtype=bool)
        for column in columns:
            finite &= np.isfinite(column)
        if not finite.all() and self.nonfinite_policy == "fail":
            _fail_nonfinite(raw, columns, self.encoder, finite, file_row)
        arrays: list[pa.Array] = [pa.array(np.arange(n, dtype=np.int64))]
        if self.has_split:
            arrays.append(pa.array(np.full(n, raw.split, dtype=object), pa.string()))
        if self.keep_raw_label:
            arrays.append(pa.array(labels[codes], pa.string()))
        arrays += [pa.array(c) for c in columns]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        unique_names = sorted(set(names))
        name_index = {name: i for i, name in enumerate(unique_names)}
        family_of_label = np.asarray([name_index[name] for name in names], dtype=np.int64)
        family_codes = family_of_label[codes]
        seen = np.bincount(family_codes, minlength=len(unique_names))
        kept_rows = np.flatnonzero(finite)
        kept_codes = family_codes[kept_rows]
        kept = np.bincount(kept_codes, minlength=len(unique_names))
        # One gather per batch puts each family's rows together; the per-family parts are slices.
        grouped = table.take(pa.array(kept_rows[np.argsort(kept_codes, kind="stable")]))
        stats = None
        if raw.split == "train":
            for i, family in enumerate(unique_names):
                if kept[i] and family in self.normal:
                    stats = stats or RunningStats(len(self.encoder.feature_names))
                    stats.update(columns, finite & (family_codes == i))
        return EncodedBatch(raw.split, n, grouped, unique_names, seen, kept, stats,
                            unseen if raw.split == "test" else {})


def serial_encoded(batch_encoder: BatchEncoder, batches) -> Iterator[EncodedBatch]:
    """(raw, batch) pairs encoded in this process, in order."""
    current, file_row = None, 0
    for raw, batch in batches:
        if raw is not current:
            current, file_row = raw, 0
        if batch.num_rows:
            yield batch_encoder.encode(raw, batch, file_row)
            file_row += batch.num_rows


def _fail_nonfinite(raw, columns, encoder, finite, file_row) -> None:
    i = int(np.flatnonzero(~finite)[0])
    j = next(j for j, c in enumerate(columns) if not np.isfinite(c[i]))
    value = columns[j][i]
    what = "empty/NaN" if np.isnan(value) else str(value)
    raise DataError(
        f"{raw.key}: {raw.uri}: data row {file_row + i + 1}: feature '{encoder.feature_names[j]}' is {what}; "
        "clean the input or set data.source.nonfinite_policy=drop to drop and count such rows"
    )
