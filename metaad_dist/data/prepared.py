"""A prepared dataset (local folder or s3://bucket/prefix) as a DatasetSource.

Reads open only the Parquet shards of the requested families, as listed in the manifest, so a
family nobody asked for is never touched. Per family counters of rows, bytes and files read
make that checkable. Every shard is checked against the manifest when it is opened
(manifest.ShardCheck): a damaged or edited dataset is one line naming the shard, never rows
trained on silently.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from metaad_dist.config import StorageConfig
from metaad_dist.data.manifest import ROW_ID, SPLIT, ShardCheck, family_shards, feature_names, load_manifest
from metaad_dist.data.storage import open_location, storage_errors
from metaad_dist.data.table import FamilyTable
from metaad_dist.errors import DataError

CONVERT_ROWS = 4096  # rows per block when turning Arrow columns into the row-major feature matrix


class PreparedSource:
    def __init__(self, path: str, storage: Optional[StorageConfig] = None):
        self.location = open_location(path, storage or StorageConfig(), create_bucket=False)
        self.manifest: dict[str, Any] = load_manifest(self.location)
        self.feature_names: list[str] = feature_names(self.manifest)
        self.has_split: bool = bool(self.manifest.get("has_split")) and SPLIT in self.manifest["columns"]
        self.rows_read: Counter[str] = Counter()
        self.bytes_read: Counter[str] = Counter()
        self.files_opened: Counter[str] = Counter()
        self.check = ShardCheck.from_manifest(self.uri, self.manifest, (storage or StorageConfig()).verify_checksums)

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

    def _open(self, family: str) -> Iterator[tuple[str, pq.ParquetFile]]:
        """Each shard of a family, checked against the manifest: size, sha256 (the first time this
        process opens it: the shard is read once into memory, hashed, and parsed from there, not
        read twice), footer columns, types and rows. Yields (shard uri, ParquetFile)."""
        self._family(family)
        index = {s["path"]: i for i, s in enumerate(self.manifest["shards"])}
        shards = [index[s["path"]] for s in family_shards(self.manifest, family)]
        paths = [self.location.path(self.manifest["shard_root"], self.manifest["shards"][i]["path"]) for i in shards]
        with storage_errors(self.uri):
            infos = self.location.fs.get_file_info(paths)
        for i, info in zip(shards, infos):  # a cheap first pass: missing, cut or replaced shards
            self.check.check_size(i, None if info.type == pafs.FileType.NotFound else info.size)
        for i, path in zip(shards, paths):
            where = self.check.where(i)
            with storage_errors(where):
                if self.check.needs_hash(i):
                    with self.location.fs.open_input_stream(path) as f:
                        data = f.read()
                    self.check.check_hash(i, hashlib.sha256(data).hexdigest())
                    handle = pa.BufferReader(data)
                else:
                    handle = self.location.fs.open_input_file(path)
                pf = pq.ParquetFile(handle)
            self.check.check_footer(i, pf.metadata)
            self.files_opened[family] += 1
            self.bytes_read[family] += self.check.shards[i][3]
            yield where, pf

    def _columns(self) -> list[str]:
        return [ROW_ID] + ([SPLIT] if self.has_split else []) + self.feature_names

    def _read_table(self, family: str) -> pa.Table:
        tables = []
        for where, pf in self._open(family):
            with storage_errors(where):  # a codec error names its shard
                tables.append(pf.read(columns=self._columns(), use_threads=True))
        table = pa.concat_tables(tables) if tables else self._empty()
        self.rows_read[family] += table.num_rows
        return table

    def _empty(self) -> pa.Table:
        types = dict(self.check.columns)
        return pa.schema([(c, pa.type_for_alias(types[c])) for c in self._columns()]).empty_table()

    def read_family(self, family: str) -> FamilyTable:
        return self._to_family_table([(family, self._read_table(family))])

    def read(self, families: Sequence[str]) -> FamilyTable:
        """Rows of these families only: float32 features in manifest order, row ids, split."""
        return self._to_family_table([(str(f), self._read_table(str(f))) for f in dict.fromkeys(families)])

    def iter_batches(self, family: str, batch_rows: Optional[int] = None) -> Iterator[FamilyTable]:
        """Stream one family in batches (row groups by default) without holding it whole."""
        for where, pf in self._open(family):
            with storage_errors(where):
                batches = (pf.iter_batches(batch_size=batch_rows, columns=self._columns()) if batch_rows else
                           (pf.read_row_group(g, columns=self._columns()) for g in range(pf.num_row_groups)))
                for batch in batches:
                    if batch.num_rows:
                        self.rows_read[family] += batch.num_rows
                        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
                        yield self._to_family_table([(family, table)])

    def _to_family_table(self, parts: list[tuple[str, pa.Table]]) -> FamilyTable:
        """Arrow tables of whole families -> one FamilyTable, rows of each family ordered by row id."""
        n = sum(t.num_rows for _, t in parts)
        d = len(self.feature_names)
        features = np.empty((n, d), dtype=np.float32)
        row_ids = np.empty(n, dtype=np.int64)
        families = np.empty(n, dtype=object)
        split = np.empty(n, dtype=object) if self.has_split else None
        start = 0
        for family, table in parts:
            m = table.num_rows
            families[start:start + m] = family
            row_ids[start:start + m] = table.column(ROW_ID).to_numpy()
            if split is not None:
                split[start:start + m] = table.column(SPLIT).to_numpy(zero_copy_only=False)
            # Copy in cache-sized row blocks: column by column into a row-major matrix is slower.
            at = start
            for batch in table.select(self.feature_names).to_batches(max_chunksize=CONVERT_ROWS):
                k = batch.num_rows
                if k:
                    features[at:at + k] = np.stack([c.to_numpy() for c in batch.columns], axis=1) if d else 0
                    at += k
            ids = row_ids[start:start + m]
            if m > 1 and not (ids[1:] > ids[:-1]).all():  # shards hold rows in source order; be safe
                order = start + np.argsort(ids, kind="stable")
                features[start:start + m] = features[order]
                row_ids[start:start + m] = row_ids[order]
                if split is not None:
                    split[start:start + m] = split[order]
            start += m
        return FamilyTable(
            features=features,
            families=families.astype(str) if n else np.zeros(0, dtype=str),
            row_ids=row_ids,
            feature_names=list(self.feature_names),
            split=(split.astype(str) if n else np.zeros(0, dtype=str)) if split is not None else None,
        )
