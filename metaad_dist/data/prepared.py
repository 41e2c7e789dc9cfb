"""A prepared dataset (local folder or s3://bucket/prefix) as a DatasetSource.

Reads open only the Parquet shards of the requested families, as listed in the manifest
(pyarrow.dataset over those files alone), so a family nobody asked for is never touched. Per
family counters of rows, bytes and files read make that checkable.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from metaad_dist.config import StorageConfig
from metaad_dist.data.manifest import ROW_ID, SPLIT, family_shards, feature_names, load_manifest
from metaad_dist.data.storage import open_location, storage_errors
from metaad_dist.data.table import FamilyTable
from metaad_dist.errors import DataError


class PreparedSource:
    def __init__(self, path: str, storage: Optional[StorageConfig] = None):
        self.location = open_location(path, storage or StorageConfig(), create_bucket=False)
        self.manifest: dict[str, Any] = load_manifest(self.location)
        self.feature_names: list[str] = feature_names(self.manifest)
        self.has_split: bool = bool(self.manifest.get("has_split")) and SPLIT in self.manifest["columns"]
        self.rows_read: Counter[str] = Counter()
        self.bytes_read: Counter[str] = Counter()
        self.files_opened: Counter[str] = Counter()

    @property
    def uri(self) -> str:
        return self.location.uri

    def family_names(self) -> list[str]:
        return sorted(self.manifest["families"])

    def family_rows(self, family: str) -> int:
        return int(self._family(family)["rows"])

    def _family(self, family: str) -> dict[str, Any]:
        try:
            return self.manifest["families"][family]
        except KeyError:
            raise DataError(
                f"{self.uri}: no family '{family}'; the dataset has {self.family_names()}"
            ) from None

    def _dataset(self, family: str) -> pads.Dataset:
        self._family(family)
        shards = family_shards(self.manifest, family)
        paths = [self.location.path(self.manifest["shard_root"], s["path"]) for s in shards]
        try:
            with storage_errors(self.uri):
                dataset = pads.dataset(paths, filesystem=self.location.fs, format="parquet")
        except FileNotFoundError as exc:
            raise DataError(
                f"{self.uri}: shard {exc} of family '{family}' is missing; the dataset is damaged, re-run metaad prepare"
            ) from None
        self.files_opened[family] += len(paths)
        self.bytes_read[family] += sum(int(s["bytes"]) for s in shards)
        return dataset

    def _columns(self) -> list[str]:
        return [ROW_ID] + ([SPLIT] if self.has_split else []) + self.feature_names

    def read_family(self, family: str) -> FamilyTable:
        dataset = self._dataset(family)
        with storage_errors(self.uri):
            table = dataset.to_table(columns=self._columns())
        self.rows_read[family] += table.num_rows
        return self._to_family_table(table, family)

    def read(self, families: Sequence[str]) -> FamilyTable:
        """Rows of these families only: float32 features in manifest order, row ids, split."""
        parts = [self.read_family(str(f)) for f in dict.fromkeys(families)]
        if not parts:
            return FamilyTable(
                features=np.zeros((0, len(self.feature_names)), dtype=np.float32),
                families=np.zeros(0, dtype=str),
                row_ids=np.zeros(0, dtype=np.int64),
                feature_names=list(self.feature_names),
                split=np.zeros(0, dtype=str) if self.has_split else None,
            )
        return FamilyTable(
            features=np.concatenate([p.features for p in parts]),
            families=np.concatenate([p.families for p in parts]),
            row_ids=np.concatenate([p.row_ids for p in parts]),
            feature_names=list(self.feature_names),
            split=np.concatenate([p.split for p in parts]) if self.has_split else None,
        )

    def iter_batches(self, family: str, batch_rows: Optional[int] = None) -> Iterator[FamilyTable]:
        """Stream one family in batches (row groups by default) without holding it whole."""
        dataset = self._dataset(family)
        kwargs = {"batch_size": batch_rows} if batch_rows else {}
        with storage_errors(self.uri):
            for batch in dataset.to_batches(columns=self._columns(), **kwargs):
                if batch.num_rows:
                    self.rows_read[family] += batch.num_rows
                    yield self._to_family_table(pa.Table.from_batches([batch]), family)

    def _to_family_table(self, table: pa.Table, family: str) -> FamilyTable:
        n = table.num_rows
        d = len(self.feature_names)
        features = np.empty((n, d), dtype=np.float32)
        for j, name in enumerate(self.feature_names):
            features[:, j] = table.column(name).to_numpy()
        row_ids = table.column(ROW_ID).to_numpy().astype(np.int64, copy=False)
        order = np.argsort(row_ids, kind="stable")
        if not np.array_equal(order, np.arange(n)):
            features, row_ids = features[order], row_ids[order]
        split = None
        if self.has_split:
            split = np.asarray(table.column(SPLIT).to_numpy(zero_copy_only=False)).astype(str)
            if not np.array_equal(order, np.arange(n)):
                split = split[order]
        return FamilyTable(
            features=features,
            families=np.full(n, family, dtype=object).astype(str),
            row_ids=row_ids,
            feature_names=list(self.feature_names),
            split=split,
        )
