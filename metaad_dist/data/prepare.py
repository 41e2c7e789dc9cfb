"""`metaad prepare data=<dataset> output=<folder or s3://bucket/prefix>` (docs/method.md, data contract).

Streams the raw train (and official test) files once, encodes features to float32, assigns
stable row ids (the 0-based position of a row among all data rows, train files first), and
writes Parquet shards partitioned by family with bounded row groups, then manifest.json
(data/dataset_writer.py commits them atomically). Reading and encoding run in this process or,
for large inputs, in Ray tasks (data/parallel_read.py); both yield the same shards.

Categorical columns need their categories before the first row is encoded, so when there are
any, the train files are scanned once beforehand for those columns alone.
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from metaad_dist.config import DataConfig, SourceConfig, StorageConfig
from metaad_dist.data.batch_encoder import BatchEncoder, FamilyLabels, serial_encoded
from metaad_dist.data.builtin import BUILTIN_PREFIX, load_builtin
from metaad_dist.data.dataset_writer import open_destination, write_dataset
from metaad_dist.data.encoding import FeatureEncoder
from metaad_dist.data.raw_files import RawFile, file_digest, raw_file
from metaad_dist.data.readers import check_category_count, column_names, iter_batches, load_label_map
from metaad_dist.errors import ConfigError, DataError

NONFINITE_POLICIES = ("drop", "fail")
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none")
PARALLEL_MODES = ("auto", "ray", "serial")


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
    dest = open_destination(output, src, storage)
    parallel = _parallel_parts(inputs, src, storage)
    categories = parallel.categories(plan) if parallel else _learn_categories(plan, src, storage)
    encoder = FeatureEncoder(plan.feature_columns, categories, src.categorical_encoding)
    families = FamilyLabels(src, label_map, label_map_uri)
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
    return write_dataset(data, dest, batch_encoder, encoded, source_info)


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
    dest = open_destination(output, src, storage)
    encoder = FeatureEncoder(table.feature_names, {}, src.categorical_encoding)
    raw = RawFile(key="data.path", uri=data.path, split="train", kind="builtin", compression=None)
    families = FamilyLabels(SourceConfig(family_column=family_column), None, None)

    def batches():
        for start in range(0, len(table), src.row_group_size):
            part = table.select(slice(start, start + src.row_group_size))
            columns = {n: pa.array(part.features[:, j]) for j, n in enumerate(table.feature_names)}
            columns[family_column] = pa.array(part.families.astype(str))
            yield raw, pa.RecordBatch.from_pydict(columns)

    source_info = {"builtin": name, "family_column": family_column}
    batch_encoder = BatchEncoder(data, encoder, families, False, False)
    return write_dataset(data, dest, batch_encoder, serial_encoded(batch_encoder, batches()), source_info)


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
