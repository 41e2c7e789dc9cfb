"""`metaad prepare data=<dataset> output=<folder or s3://bucket/prefix>` (METHOD.md section 2).

Streams the raw train (and official test) files once, encodes features to float32, assigns
stable row ids (the 0-based position of a row among all data rows, train files first), and
writes Parquet shards partitioned by family with bounded row groups, then manifest.json.

Atomicity: shards go under a fresh `shards-<stamp>-<id>/` prefix that no manifest names yet;
the manifest, written last in one atomic write, commits them. On any error the new prefix is
deleted; a killed prepare leaves only an unnamed prefix, which the next successful prepare into
the same destination removes. A folder without a manifest is not a dataset.

Categorical columns need their categories before the first row is encoded, so when there are
any, the train files are scanned once beforehand for those columns alone.
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any, Iterator, Optional
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metaad_dist.config import DataConfig, SourceConfig, StorageConfig
from metaad_dist.data.builtin import BUILTIN_PREFIX, load_builtin
from metaad_dist.data.encoding import FeatureEncoder
from metaad_dist.data.manifest import (
    FAMILY_DIR,
    FORMAT,
    MANIFEST_NAME,
    RAW_LABEL,
    ROW_ID,
    SCHEMA_VERSION,
    SHARD_PREFIX,
    SPLIT,
    write_manifest,
)
from metaad_dist.data.readers import (
    RawFile,
    check_category_count,
    column_names,
    file_digest,
    iter_batches,
    load_label_map,
    raw_file,
)
from metaad_dist.data.storage import Location, abort_stale_uploads, open_location
from metaad_dist.errors import ConfigError, DataError

NONFINITE_POLICIES = ("drop", "fail")
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none")
SPLITS = ("train", "test")
SINK_BUFFER_BYTES = 8 << 20  # C++-side buffer in front of the hashing sink of each open shard


# --------------------------------------------------------------------------- shard writing


class _HashingSink:
    """A write-only file object that hashes what passes through it to an Arrow output stream."""

    def __init__(self, stream):
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._stream.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stream.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class _FamilyShards:
    def __init__(self, family: str):
        self.family = family
        self.directory = FAMILY_DIR + quote(family, safe="")
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.part = 0
        self.writer: Optional[pq.ParquetWriter] = None
        self.sink: Optional[_HashingSink] = None
        self.buffer: Optional[pa.BufferedOutputStream] = None
        self.path = ""
        self.rows_in_shard = 0
        self.row_groups = 0


class ShardSetWriter:
    """Per-family Parquet writers with bounded row groups and shards, hashing as they write."""

    def __init__(self, root: Location, schema: pa.Schema, src: SourceConfig):
        self.root = root
        self.schema = schema
        self.row_group_size = src.row_group_size
        self.rows_per_shard = src.rows_per_shard
        self.compression = None if src.compression == "none" else src.compression
        self.dictionary_columns = [c for c in (SPLIT, RAW_LABEL) if c in schema.names]
        self.families: dict[str, _FamilyShards] = {}
        self.shards: list[dict[str, Any]] = []

    def append(self, family: str, table: pa.Table) -> None:
        state = self.families.get(family)
        if state is None:
            state = self.families[family] = _FamilyShards(family)
        state.pending.append(table)
        state.pending_rows += table.num_rows
        self._drain(state, final=False)

    def finish(self) -> list[dict[str, Any]]:
        for state in self.families.values():
            self._drain(state, final=True)
            if state.writer is not None:
                self._close_shard(state)
        return self.shards

    def abort(self) -> None:
        """Close what is open (errors ignored) and delete everything under the root."""
        for state in self.families.values():
            for closing in (state.writer, state.buffer, state.sink):
                try:
                    if closing is not None:
                        closing.close()
                except Exception:  # the root is deleted next; a broken stream must not stop that
                    pass
        try:
            self.root.delete()
        except Exception:  # keep the error that made us abort; the next prepare removes leftovers
            pass

    def _drain(self, state: _FamilyShards, final: bool) -> None:
        while state.pending_rows >= self.row_group_size or (final and state.pending_rows > 0):
            if state.writer is None:
                self._open_shard(state)
            take = min(self.row_group_size, state.pending_rows, self.rows_per_shard - state.rows_in_shard)
            buffered = pa.concat_tables(state.pending) if len(state.pending) > 1 else state.pending[0]
            state.writer.write_table(buffered.slice(0, take), row_group_size=take)
            rest = buffered.slice(take)
            state.pending = [rest] if rest.num_rows else []
            state.pending_rows = rest.num_rows
            state.rows_in_shard += take
            state.row_groups += 1
            if state.rows_in_shard >= self.rows_per_shard:
                self._close_shard(state)

    def _open_shard(self, state: _FamilyShards) -> None:
        state.path = f"{state.directory}/part-{state.part:05d}.parquet"
        state.sink = _HashingSink(self.root.open_output_stream(state.path))
        # Buffer in C++ so the Python-level hashing sink sees few large writes, not one per page.
        state.buffer = pa.BufferedOutputStream(pa.PythonFile(state.sink, mode="w"), buffer_size=SINK_BUFFER_BYTES)
        state.writer = pq.ParquetWriter(
            state.buffer,
            self.schema,
            compression=self.compression,
            use_dictionary=self.dictionary_columns,
            write_statistics=[ROW_ID],  # row-id ranges per row group; feature statistics cost time, unused
        )
        state.rows_in_shard = 0
        state.row_groups = 0

    def _close_shard(self, state: _FamilyShards) -> None:
        state.writer.close()
        state.buffer.close()  # flushes into the sink
        state.sink.close()
        self.shards.append(
            {
                "path": state.path,
                "family": state.family,
                "rows": state.rows_in_shard,
                "row_groups": state.row_groups,
                "bytes": state.sink.size,
                "sha256": state.sink.sha256,
            }
        )
        state.writer = state.buffer = state.sink = None
        state.part += 1


# --------------------------------------------------------------------------- statistics


class _RunningStats:
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

    def merge(self, other: Optional["_RunningStats"]) -> None:
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


# --------------------------------------------------------------------------- planning


def _check_source(src: SourceConfig) -> None:
    if src.nonfinite_policy not in NONFINITE_POLICIES:
        raise ConfigError(f"data.source.nonfinite_policy='{src.nonfinite_policy}'; expected one of {list(NONFINITE_POLICIES)}")
    if src.compression not in COMPRESSIONS:
        raise ConfigError(f"data.source.compression='{src.compression}'; expected one of {list(COMPRESSIONS)}")
    for key in ("row_group_size", "rows_per_shard", "csv_block_size", "max_categories", "parallel_block_bytes"):
        if getattr(src, key) < 1:
            raise ConfigError(f"data.source.{key}={getattr(src, key)}; expected a positive integer")
    if src.rows_per_shard < src.row_group_size:
        raise ConfigError(
            f"data.source.rows_per_shard={src.rows_per_shard} is below data.source.row_group_size="
            f"{src.row_group_size}; expected rows_per_shard >= row_group_size"
        )
    overlap = set(src.drop_columns) & set(src.categorical_columns)
    if overlap:
        raise ConfigError(f"data.source: column(s) {sorted(overlap)} are both dropped and categorical")
    if src.family_column in set(src.drop_columns) | set(src.categorical_columns):
        raise ConfigError(f"data.source.family_column='{src.family_column}' is also listed in drop_columns or categorical_columns")


class _Plan:
    """The columns of the inputs and what becomes of each."""

    def __init__(self, inputs: list[RawFile], src: SourceConfig, storage: StorageConfig):
        self.inputs = inputs
        self.names: dict[str, list[str]] = {}
        reference: Optional[list[str]] = None
        for raw in inputs:
            names = column_names(raw, src, storage)
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise DataError(f"{raw.key}: {raw.uri}: column '{dup}' occurs twice")
            if src.family_column not in names:
                raise DataError(
                    f"data.source.family_column='{src.family_column}': no such column in {raw.uri}; "
                    f"columns are {_preview(names)}"
                )
            for setting in ("drop_columns", "categorical_columns"):
                for column in getattr(src, setting):
                    if column not in names:
                        raise DataError(
                            f"data.source.{setting}: no column '{column}' in {raw.uri}; columns are {_preview(names)}"
                        )
            if reference is None:
                reference = names
            elif set(names) != set(reference):
                extra = sorted(set(names) ^ set(reference))
                raise DataError(
                    f"{raw.key}: {raw.uri}: columns differ from {inputs[0].uri} (e.g. {extra[:3]}); "
                    "all input files must have the same columns"
                )
            self.names[raw.uri] = names
        assert reference is not None
        skip = set(src.drop_columns) | {src.family_column}
        self.feature_columns = [n for n in reference if n not in skip]
        self.categorical = [c for c in self.feature_columns if c in set(src.categorical_columns)]
        self.types: dict[str, pa.DataType] = {src.family_column: pa.string()}
        for column in self.feature_columns:
            self.types[column] = pa.string() if column in self.categorical else pa.float64()


def _preview(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} columns)"


def _input_files(data: DataConfig, storage: StorageConfig) -> list[RawFile]:
    src = data.source
    if not src.train_files:
        raise ConfigError(f"data.source.train_files is empty for dataset '{data.name}'; name the raw input files")
    files = [raw_file(u, f"data.source.train_files[{i}]", "train", src, storage) for i, u in enumerate(src.train_files)]
    files += [raw_file(u, f"data.source.test_files[{i}]", "test", src, storage) for i, u in enumerate(src.test_files)]
    return files


def _learn_categories(plan: _Plan, src: SourceConfig, storage: StorageConfig) -> dict[str, list[str]]:
    if not plan.categorical:
        return {}
    seen: dict[str, set[str]] = {c: set() for c in plan.categorical}
    types = {c: pa.string() for c in plan.categorical}
    for raw in plan.inputs:
        if raw.split != "train":
            continue
        for batch in iter_batches(raw, src, storage, plan.names[raw.uri], types, src.row_group_size):
            for column in plan.categorical:
                seen[column].update(pc.unique(batch.column(column)).to_pylist())
                check_category_count(column, seen[column], src, raw)
    return {c: sorted(v for v in seen[c] if v is not None) for c in plan.categorical}


# --------------------------------------------------------------------------- the prepare


class _Families:
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


def prepare_dataset(data: DataConfig, output: str, storage: StorageConfig) -> dict[str, Any]:
    """Prepare `data` into `output` and return the manifest that commits it."""
    src = data.source
    _check_source(src)
    builtin = data.path.startswith(BUILTIN_PREFIX) and not src.train_files
    if builtin:
        return _prepare_builtin(data, output, storage)
    inputs = _input_files(data, storage)
    label_map_uri = src.label_map
    label_map = load_label_map(label_map_uri, src, storage) if label_map_uri else None
    plan = _Plan(inputs, src, storage)
    dest = _open_destination(output, src, storage)
    parallel = _parallel_parts(inputs, src, storage)
    categories = parallel.categories(plan) if parallel else _learn_categories(plan, src, storage)
    encoder = FeatureEncoder(plan.feature_columns, categories, src.categorical_encoding)
    families = _Families(src, label_map, label_map_uri)
    batch_encoder = BatchEncoder(data, encoder, families, bool(src.test_files), label_map is not None)

    def batches():
        for raw in inputs:
            for batch in iter_batches(raw, src, storage, plan.names[raw.uri], plan.types, src.row_group_size):
                yield raw, batch

    source_info = {
        "files": [
            dict(zip(("sha256", "bytes"), file_digest(raw.uri, storage)), uri=_full(raw.uri), split=raw.split,
                 kind=raw.kind)
            for raw in inputs
        ],
        "label_map": (
            dict(zip(("sha256", "bytes"), file_digest(label_map_uri, storage)), uri=_full(label_map_uri))
            if label_map_uri else None
        ),
        "family_column": src.family_column,
        "drop_columns": list(src.drop_columns),
        "categorical_columns": list(src.categorical_columns),
        "nonfinite_policy": src.nonfinite_policy,
        "label_strip_suffix": src.label_strip_suffix,
    }
    encoded = parallel.encoded(plan, batch_encoder) if parallel else serial_encoded(batch_encoder, batches())
    return _write_dataset(data, dest, batch_encoder, encoded, source_info)


PARALLEL_MODES = ("auto", "ray", "serial")


def _parallel_parts(inputs: list[RawFile], src: SourceConfig, storage: StorageConfig):
    """A ParallelRead over the inputs when data.source.parallel asks for one (auto: inputs of at
    least data.source.parallel_min_bytes, where Ray's start-up pays for itself), else None."""
    if src.parallel not in PARALLEL_MODES:
        raise ConfigError(f"data.source.parallel='{src.parallel}'; expected one of {list(PARALLEL_MODES)}")
    if src.parallel == "serial":
        return None
    from metaad_dist.data.parallel_read import ParallelRead

    reader = ParallelRead(inputs, src, storage)
    if src.parallel == "auto" and reader.total_bytes < src.parallel_min_bytes:
        return None
    return reader


def _full(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def _prepare_builtin(data: DataConfig, output: str, storage: StorageConfig) -> dict[str, Any]:
    """The built-in table, written through the same path as any raw file."""
    name = data.path[len(BUILTIN_PREFIX):]
    table = load_builtin(name)
    if not np.array_equal(table.row_ids, np.arange(len(table))):
        raise DataError(f"{data.path}: built-in row ids are not 0..n-1")  # the writer assigns positions
    src = data.source
    family_column = "family"
    dest = _open_destination(output, src, storage)
    encoder = FeatureEncoder(table.feature_names, {}, src.categorical_encoding)
    raw = RawFile(key="data.path", uri=data.path, split="train", kind="builtin", compression=None)
    families = _Families(SourceConfig(family_column=family_column), None, None)

    def batches():
        for start in range(0, len(table), src.row_group_size):
            part = table.select(slice(start, start + src.row_group_size))
            columns = {n: pa.array(part.features[:, j]) for j, n in enumerate(table.feature_names)}
            columns[family_column] = pa.array(part.families.astype(str))
            yield raw, pa.RecordBatch.from_pydict(columns)

    source_info = {"builtin": name, "family_column": family_column}
    batch_encoder = BatchEncoder(data, encoder, families, False, False)
    return _write_dataset(data, dest, batch_encoder, serial_encoded(batch_encoder, batches()), source_info)


def _open_destination(output: str, src: SourceConfig, storage: StorageConfig) -> Location:
    dest = open_location(output, storage)
    if dest.exists(MANIFEST_NAME) and not src.overwrite:
        raise DataError(
            f"{dest.uri}: already holds a prepared dataset ({MANIFEST_NAME}); "
            "set data.source.overwrite=true to replace it"
        )
    return dest


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
    stats: Optional[_RunningStats]  # of this batch's training rows of normal families
    unseen: dict[str, int]  # test rows with categories unseen in the train files


class BatchEncoder:
    """Raw record batch -> EncodedBatch: family resolution, feature encoding, finiteness, grouping."""

    def __init__(self, data: DataConfig, encoder: FeatureEncoder, families: "_Families", has_split: bool,
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
                    stats = stats or _RunningStats(len(self.encoder.feature_names))
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


def _write_dataset(data, dest, batch_encoder: BatchEncoder, encoded, source_info) -> dict[str, Any]:
    """Write EncodedBatches (in row order) as shards, then the manifest that commits them."""
    src = data.source
    started = time.perf_counter()
    encoder, has_split, keep_raw_label = batch_encoder.encoder, batch_encoder.has_split, batch_encoder.keep_raw_label
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    shard_root = f"{SHARD_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
    writer = ShardSetWriter(dest.child(shard_root), batch_encoder.schema, src)
    normal = batch_encoder.normal
    stats = _RunningStats(len(encoder.feature_names))
    counts: dict[str, dict[str, int]] = {}
    unseen_total: dict[str, int] = {}
    next_row = 0
    try:
        for part in encoded:
            table = part.table.set_column(0, ROW_ID, pc.add(part.table.column(0), pa.scalar(next_row, pa.int64())))
            next_row += part.rows
            for column, k in part.unseen.items():
                unseen_total[column] = unseen_total.get(column, 0) + k
            stats.merge(part.stats)
            bounds = np.concatenate([[0], np.cumsum(part.kept)])
            for i, family in enumerate(part.families):
                entry = counts.setdefault(family, {"seen": 0, "rows": 0, "train_rows": 0, "test_rows": 0, "dropped_nonfinite": 0})
                entry["seen"] += int(part.seen[i])
                entry["rows"] += int(part.kept[i])
                entry[f"{part.split}_rows"] += int(part.kept[i])
                entry["dropped_nonfinite"] += int(part.seen[i] - part.kept[i])
                if part.kept[i]:
                    writer.append(family, table.slice(int(bounds[i]), int(part.kept[i])))
        if not counts:
            raise DataError(f"dataset '{data.name}': the inputs hold no data rows")
        for family, entry in sorted(counts.items()):
            if entry["rows"] == 0:
                raise DataError(
                    f"family '{family}': all {entry['seen']} rows have NaN, empty or infinite features and were "
                    "dropped (data.source.nonfinite_policy=drop); nothing is left to write"
                )
        missing_normal = sorted(normal - set(counts))
        if missing_normal:
            raise ConfigError(
                f"data.normal: family '{missing_normal[0]}' is not in the prepared data; families are {sorted(counts)}"
            )
        shards = writer.finish()
        manifest = _manifest(data, encoder, counts, shards, shard_root, has_split, keep_raw_label, stats,
                             unseen_total, next_row, source_info)
        manifest["prepare_seconds"] = round(time.perf_counter() - started, 3)
        write_manifest(dest, manifest)
    except BaseException:
        writer.abort()
        raise
    _remove_stale(dest, shard_root)
    return manifest


def _fail_nonfinite(raw, columns, encoder, finite, file_row) -> None:
    i = int(np.flatnonzero(~finite)[0])
    j = next(j for j, c in enumerate(columns) if not np.isfinite(c[i]))
    value = columns[j][i]
    what = "empty/NaN" if np.isnan(value) else str(value)
    raise DataError(
        f"{raw.key}: {raw.uri}: data row {file_row + i + 1}: feature '{encoder.feature_names[j]}' is {what}; "
        "clean the input or set data.source.nonfinite_policy=drop to drop and count such rows"
    )


def _manifest(data, encoder, counts, shards, shard_root, has_split, keep_raw_label, stats, unseen, total_rows,
              source_info) -> dict[str, Any]:
    src = data.source
    by_family: dict[str, list[int]] = {}
    for i, shard in enumerate(shards):
        by_family.setdefault(shard["family"], []).append(i)
    families = {
        family: {
            "rows": entry["rows"],
            "train_rows": entry["train_rows"],
            "test_rows": entry["test_rows"],
            "dropped_nonfinite": entry["dropped_nonfinite"],
            "shards": by_family.get(family, []),
        }
        for family, entry in sorted(counts.items())
    }
    normal = [str(f) for f in data.normal]
    scope = (
        "rows with split=train of the normal families"
        if has_split
        else "all rows of the normal families (the source has no official split; training refits its scaler on "
        "its seed's training normal rows)"
    )
    columns = [ROW_ID] + ([SPLIT] if has_split else []) + ([RAW_LABEL] if keep_raw_label else [])
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "name": data.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features": encoder.features,
        "categorical_encoding": encoder.encoding,
        "categories": encoder.categories,
        "columns": columns,
        "family_partition": "family",
        "has_split": has_split,
        "rows": sum(entry["rows"] for entry in counts.values()),
        "source_rows": total_rows,
        "dropped": {"nonfinite": sum(entry["dropped_nonfinite"] for entry in counts.values())},
        "unseen_categories": unseen,
        "families": families,
        "normal_families": [f for f in normal if f in families],
        "normalization": {"scope": scope, **stats.to_json()},
        "row_group_size": src.row_group_size,
        "rows_per_shard": src.rows_per_shard,
        "compression": src.compression,
        "shard_root": shard_root,
        "shards": shards,
        "source": source_info,
    }


def _remove_stale(dest: Location, keep: str) -> None:
    """Shard prefixes no manifest names (killed or replaced prepares) and stray temporary manifests.

    On S3 also aborts the unfinished multipart uploads a killed prepare left under them.
    """
    for name in dest.list_children():
        if (name.startswith(SHARD_PREFIX) and name != keep) or name.startswith(MANIFEST_NAME + ".tmp-"):
            dest.delete(name)
    if dest.is_s3:
        abort_stale_uploads(dest, keep)


def prepare_command(cfg) -> None:
    output = cfg.output or (None if cfg.data.path.startswith(BUILTIN_PREFIX) else cfg.data.path)
    if not output:
        raise ConfigError(
            f"metaad prepare data={cfg.data.name} needs output=<folder or s3://bucket/prefix> "
            "(the prepared dataset's destination)"
        )
    started = time.perf_counter()
    manifest = prepare_dataset(cfg.data, output, cfg.storage)
    seconds = time.perf_counter() - started
    if not cfg.quiet:
        dropped = manifest["dropped"]["nonfinite"]
        print(
            f"prepared '{manifest['name']}': {manifest['rows']} rows ({dropped} dropped as non-finite), "
            f"{len(manifest['families'])} families, {len(manifest['features'])} features, "
            f"{len(manifest['shards'])} shards -> {output} in {seconds:.1f}s "
            f"({manifest['source_rows'] / max(seconds, 1e-9):,.0f} rows/s)"
        )
