"""Row-group reads of a prepared dataset for the samplers: open shards (checked against the
manifest), decode features, and count per family what was touched (`COUNTERS`), so "zero reads
of held-out families" and "only budget rows of meta families" are checkable.

`ShardReader` streams a unit (row group) of a normal family in batches, keeps its training
rows, scales them with the run's FeatureScaler and labels them with the run's ClassLabeler.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metaad_dist.config import StorageConfig
from metaad_dist.data.manifest import ROW_ID, SPLIT, ShardCheck
from metaad_dist.data.prepared import PreparedSource
from metaad_dist.data.scaling import FeatureScaler
from metaad_dist.data.storage import open_location, storage_errors
from metaad_dist.episodes.buffered import FamilyLayout, Rows, SamplerPlan
from metaad_dist.meta.labels import ClassLabeler

# files_opened: shard footers read; row_groups_read: row groups touched; id_rows_read: row ids
# read (row-id column only); rows_read: rows whose features were decoded; rows_kept: rows handed
# on to a buffer or budget pool; bytes_read: compressed bytes of the column chunks fetched.
COUNTERS = ("files_opened", "row_groups_read", "id_rows_read", "rows_read", "rows_kept", "bytes_read")


def new_counters() -> dict[str, dict[str, int]]:
    return defaultdict(lambda: dict.fromkeys(COUNTERS, 0))


def add_counters(total: dict, part: dict) -> dict:
    for family, counts in part.items():
        mine = total.setdefault(family, dict.fromkeys(COUNTERS, 0))
        for key, value in counts.items():
            mine[key] = mine.get(key, 0) + int(value)
    return total


class ShardFiles:
    """Parquet files of one dataset (footers cached) and the per-family counters.

    Each read opens its file afresh with the cached footer: a pre-buffering reader keeps the
    bytes of the last row group it read, so readers held open per shard would grow with the
    number of shards an actor touches (that is, with the dataset). The first open of a shard in
    this process checks it against the manifest (`ShardCheck`: size, sha256, columns, rows); the
    sha256 is hashed from a bounded stream, since row groups are read out of order and some never.
    """

    def __init__(self, uri: str, storage: StorageConfig, paths: list[str], check: ShardCheck):
        self.location = open_location(uri, storage, create_bucket=False)
        self.uri = uri
        self.paths = paths
        self.check = check
        self.footers: dict[int, pq.FileMetaData] = {}
        self.counters = new_counters()

    @classmethod
    def of(cls, source: PreparedSource, storage: StorageConfig) -> "ShardFiles":
        manifest = source.manifest
        paths = [source.location.path(manifest["shard_root"], s["path"]) for s in manifest["shards"]]
        return cls(source.uri, storage, paths, source.check)

    def where(self, shard: int) -> str:
        return self.check.where(shard)

    def file(self, family: str, shard: int) -> pq.ParquetFile:
        footer = self.footers.get(shard)
        try:
            with storage_errors(self.where(shard)):
                if footer is None and self.check.needs_hash(shard):
                    with self.location.fs.open_input_stream(self.paths[shard]) as stream:
                        self.check.hash_stream(shard, stream)
                handle = self.location.fs.open_input_file(self.paths[shard])
                if footer is None:
                    self.check.check_size(shard, handle.size())
                pf = pq.ParquetFile(handle, metadata=footer, pre_buffer=True)
        except FileNotFoundError:
            raise self.check.fail(shard, "is missing") from None
        if footer is None:
            self.check.check_footer(shard, pf.metadata)
            self.footers[shard] = pf.metadata
            self.counters[family]["files_opened"] += 1
        return pf

    def chunk_bytes(self, pf: pq.ParquetFile, row_group: int, columns: list[str]) -> int:
        meta = pf.metadata.row_group(row_group)
        wanted = set(columns)
        return sum(meta.column(i).total_compressed_size for i in range(meta.num_columns)
                   if meta.column(i).path_in_schema in wanted)

    def read_row_group(self, pf: pq.ParquetFile, family: str, shard: int, row_group: int, columns: list[str],
                       rows_counter: str) -> pa.Table:
        """`columns` of one row group of `pf` (this family's shard `shard`), counted as read."""
        with storage_errors(self.where(shard)):
            table = pf.read_row_group(row_group, columns=columns, use_threads=False)
        c = self.counters[family]
        c["row_groups_read"] += 1
        c[rows_counter] += table.num_rows
        c["bytes_read"] += self.chunk_bytes(pf, row_group, columns)
        return table

    def read_ids(self, family: str, shard: int, row_group: int, with_split: bool):
        columns = [ROW_ID] + ([SPLIT] if with_split else [])
        table = self.read_row_group(self.file(family, shard), family, shard, row_group, columns, "id_rows_read")
        ids = table.column(ROW_ID).to_numpy()
        split = table.column(SPLIT).to_numpy(zero_copy_only=False).astype(str) if with_split else None
        return ids, split


def features_of(batch: pa.RecordBatch, first: int, keep: Optional[np.ndarray]) -> np.ndarray:
    """Float32 row-major features from columns [first:] of a batch, rows where `keep`."""
    columns = [batch.column(j).to_numpy() for j in range(first, batch.num_columns)]
    if not columns:
        return np.zeros((int(keep.sum()) if keep is not None else batch.num_rows, 0), dtype=np.float32)
    x = np.stack(columns, axis=1).astype(np.float32, copy=False)  # one row-major pass, then one row filter
    return x if keep is None else x[keep]


class ShardReader:
    """Streams units of normal families for one actor: training rows only, scaled and labelled."""

    def __init__(self, plan: SamplerPlan):
        self.plan = plan
        self.files = ShardFiles(plan.uri, plan.storage, plan.shard_paths, plan.shard_check)
        self.scaler = FeatureScaler.from_state_dict(plan.scaler_state)
        self.labeler = ClassLabeler.from_state_dict(plan.labeler_state)
        self.columns = [ROW_ID] + list(plan.feature_names)

    @property
    def counters(self) -> dict:
        return {f: dict(c) for f, c in self.files.counters.items()}

    def read_unit(self, layout: FamilyLayout, unit: int) -> Iterator[Rows]:
        shard, rg = int(layout.shard[unit]), int(layout.row_group[unit])
        pf = self.files.file(layout.name, shard)
        c = self.files.counters[layout.name]
        c["row_groups_read"] += 1
        c["bytes_read"] += self.files.chunk_bytes(pf, rg, self.columns)
        position = int(layout.first_position[unit])
        with storage_errors(self.files.where(shard)):
            batches = pf.iter_batches(batch_size=self.plan.batch_rows, row_groups=[rg], columns=self.columns,
                                      use_threads=False)
            for batch in batches:
                ids = batch.column(0).to_numpy()
                keep = layout.training_ids.contains(ids)
                c["rows_read"] += batch.num_rows
                k = int(keep.sum())
                if not k:
                    continue
                x = self.scaler.transform(features_of(batch, 1, keep))
                y = self.labeler.predict(x, np.full(k, layout.index, dtype=np.int64))
                c["rows_kept"] += k
                yield x, y, np.arange(position, position + k, dtype=np.int64)
                position += k
