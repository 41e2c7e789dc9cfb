"""Streaming readers for raw input tables: CSV, CSV.gz, a zip holding one CSV, Parquet, NPZ, and
headerless whitespace-separated numbers (data/whitespace.py).

Every reader yields Arrow record batches of a bounded size with the requested columns cast to
the requested types, from a local path or s3:// (same storage layer as everything else).
Parse problems become one-line DataErrors that name the file, the column and the value.
NPZ is the exception to streaming: numpy loads an archive member whole. Where a table has no
family column, data/family_rules.py derives each row's family and the reader adds that column.
"""
from __future__ import annotations

import codecs
import io
import re
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from metaad_dist.config import SourceConfig, StorageConfig
from metaad_dist.data.family_rules import RowFamilies, family_rules
from metaad_dist.data.raw_files import OpenedFile, RawFile, cast_batch, damaged, exc_summary, raw_file, short, split_uri
from metaad_dist.data.whitespace import is_transposed, iter_whitespace, whitespace_width
from metaad_dist.errors import ConfigError, DataError

PEEK_BLOCK = 1 << 20


def arrow_encoding(encoding: str) -> str:
    # Arrow's CSV reader decodes UTF-8 itself and skips a UTF-8 byte-order mark.
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig"):
        return "utf8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"data.source.encoding='{encoding}'; expected a Python codec name such as utf-8 or latin-1") from None
    return encoding


def csv_read_options(src: SourceConfig, block_size: int, names: Optional[list[str]]) -> pacsv.ReadOptions:
    kwargs: dict = {"block_size": block_size, "encoding": arrow_encoding(src.encoding), "use_threads": False}  # row numbers in parse errors; no slower here
    if names is not None:
        kwargs["column_names"] = names
        kwargs["skip_rows"] = 1 if src.has_header else 0
    return pacsv.ReadOptions(**kwargs)


def column_names(raw: RawFile, src: SourceConfig, storage: StorageConfig) -> list[str]:
    """The columns of a raw file, before any dropping or renaming (with family_rules, the family
    column the reader adds comes last)."""
    names = _file_column_names(raw, src, storage)
    if not src.family_rules:
        return names
    family_rules(src)  # malformed rules fail here, before anything is written
    if src.family_column in names:
        raise ConfigError(
            f"data.source.family_rules: {raw.uri} already has a column '{src.family_column}' "
            "(data.source.family_column); leave family_rules empty to read families from it"
        )
    return names + [src.family_column]


def _file_column_names(raw: RawFile, src: SourceConfig, storage: StorageConfig) -> list[str]:
    if raw.kind == "whitespace":
        width = whitespace_width(raw, src, storage)
        if not src.column_names:
            return [f"x{j}" for j in range(width)]
        if len(src.column_names) != width:
            raise DataError(
                f"{raw.key}: {raw.uri}: {width} columns{' (after transposing)' if is_transposed(raw, src) else ''}, "
                f"but data.source.column_names has {len(src.column_names)} names"
            )
        return list(src.column_names)
    if is_transposed(raw, src):
        raise ConfigError(
            f"data.source.transpose_files matches {raw.uri}; only data.source.format=whitespace files can be transposed"
        )
    if raw.kind in ("csv", "zip"):
        if not src.has_header:
            if not src.column_names:
                raise ConfigError(
                    f"data.source.has_header=false but data.source.column_names is empty; name the columns of {raw.uri}"
                )
            return list(src.column_names)
        if src.column_names:
            return list(src.column_names)
        opened = OpenedFile(raw, storage)
        try:
            with damaged(raw):
                head = opened.stream.read(PEEK_BLOCK)
        finally:
            opened.close()
        line = head.split(b"\n", 1)[0]
        if len(line) == len(head) == PEEK_BLOCK:
            raise DataError(f"{raw.key}: {raw.uri}: no end of the header line in the first {PEEK_BLOCK} bytes")
        try:
            names = list(pacsv.read_csv(
                io.BytesIO(line.rstrip(b"\r") + b"\n"),
                read_options=pacsv.ReadOptions(encoding=arrow_encoding(src.encoding)),
            ).column_names)
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise DataError(f"{raw.key}: {raw.uri}: cannot read a CSV header ({exc_summary(exc)})") from None
        if not line.strip() or not names:
            raise DataError(f"{raw.key}: {raw.uri}: empty file, expected a CSV header")
        return names
    if raw.kind == "parquet":
        opened = OpenedFile(raw, storage)
        try:
            return list(pq.ParquetFile(opened.stream).schema_arrow.names)
        except pa.ArrowInvalid as exc:
            raise DataError(f"{raw.key}: {raw.uri}: not a Parquet file ({exc_summary(exc)})") from None
        finally:
            opened.close()
    x, _ = _load_npz(raw, src, storage)
    return _npz_feature_names(x, src, raw) + [src.family_column]


_CSV_CONVERSION = re.compile(r"column #(\d+): .*conversion error to (\w+): invalid value '(.*)'", re.S)
_CSV_COLUMNS = re.compile(r"Expected (\d+) columns, got (\d+)")


def csv_error(exc: BaseException, raw: RawFile, names: list[str], include: list[str], bad_rows: list) -> DataError:
    text = str(exc)
    match = _CSV_CONVERSION.search(text)
    if match:
        index = int(match.group(1))
        column = names[index] if index < len(names) else f"#{index}"  # Arrow counts the file's columns
        return DataError(
            f"{raw.key}: {raw.uri}: column '{column}' holds text {short(match.group(3))!r} where a number is "
            "expected; fix the value, or list the column in data.source.categorical_columns or drop_columns"
        )
    match = _CSV_COLUMNS.search(text)
    if match:
        where = f"line {bad_rows[0]}" if bad_rows and bad_rows[0] is not None else "a row"
        row = f": {short(bad_rows[1])!r}" if bad_rows and len(bad_rows) > 1 else ""
        return DataError(
            f"{raw.key}: {raw.uri}: ragged row at {where}: expected {match.group(1)} fields, "
            f"got {match.group(2)}{row}"
        )
    return DataError(f"{raw.key}: {raw.uri}: cannot parse CSV ({exc_summary(exc)})")


def iter_batches(
    raw: RawFile,
    src: SourceConfig,
    storage: StorageConfig,
    names: list[str],
    types: dict[str, pa.DataType],
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """Stream the columns in `types` (in file order) from one raw file, cast to those types."""
    include = [n for n in names if n in types]
    with damaged(raw):
        if not src.family_rules:
            yield from _iter_kind(raw, src, storage, names, include, types, batch_rows)
            return
        # The family column is the reader's (last in `names`): read the rest, then add it.
        family = src.family_column
        file_names, file_include = names[:-1], [n for n in include if n != family]
        labeler = RowFamilies(raw, family_rules(src)) if family in types else None
        first = 0
        for batch in _iter_kind(raw, src, storage, file_names, file_include, types, batch_rows):
            if labeler is not None:
                batch = pa.RecordBatch.from_arrays(
                    [*batch.columns, labeler.families(first, batch.num_rows)], names=[*batch.schema.names, family]
                )
            first += batch.num_rows
            yield batch


def _iter_kind(raw, src, storage, names, include, types, batch_rows) -> Iterator[pa.RecordBatch]:
    if raw.kind == "whitespace":
        yield from iter_whitespace(raw, src, storage, names, include, types, batch_rows)
    elif raw.kind in ("csv", "zip"):
        yield from _iter_csv(raw, src, storage, names, include, types)
    elif raw.kind == "parquet":
        opened = OpenedFile(raw, storage)
        try:
            for batch in pq.ParquetFile(opened.stream).iter_batches(batch_size=batch_rows, columns=include):
                yield cast_batch(batch, types, raw)
        except pa.ArrowInvalid as exc:
            raise DataError(f"{raw.key}: {raw.uri}: cannot read Parquet ({exc_summary(exc)})") from None
        finally:
            opened.close()
    else:
        x, y = _load_npz(raw, src, storage)
        feature_names = _npz_feature_names(x, src, raw)
        for start in range(0, len(x), batch_rows):
            stop = min(start + batch_rows, len(x))
            columns = {n: pa.array(x[start:stop, j]) for j, n in enumerate(feature_names) if n in types}
            columns[src.family_column] = pa.array(y[start:stop].astype(str))
            yield cast_batch(pa.RecordBatch.from_pydict({n: columns[n] for n in include}), types, raw)


def _iter_csv(raw, src, storage, names, include, types) -> Iterator[pa.RecordBatch]:
    bad_rows: list = []

    def on_invalid(row) -> str:
        bad_rows[:] = [row.number, row.text]
        return "error"

    opened = OpenedFile(raw, storage)
    try:
        reader = pacsv.open_csv(
            opened.stream,
            read_options=csv_read_options(src, src.csv_block_size, names),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: types[n] for n in include},
                include_columns=include,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            yield batch
    except pa.ArrowInvalid as exc:
        raise csv_error(exc, raw, names, include, bad_rows) from None
    except (UnicodeDecodeError, pa.ArrowException) as exc:
        raise DataError(f"{raw.key}: {raw.uri}: cannot read CSV ({exc_summary(exc)})") from None
    finally:
        opened.close()


def _load_npz(raw: RawFile, src: SourceConfig, storage: StorageConfig) -> tuple[np.ndarray, np.ndarray]:
    location, name = split_uri(raw.uri, storage)
    data = location.read_bytes(name)
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{raw.key}: {raw.uri}: not a valid NPZ archive ({exc_summary(exc)})") from None
    with archive:
        for key in (src.npz_features_key, src.npz_family_key):
            if key not in archive.files:
                raise DataError(
                    f"{raw.key}: {raw.uri}: no array '{key}' (has {sorted(archive.files)}); "
                    "set data.source.npz_features_key / npz_family_key"
                )
        x, y = archive[src.npz_features_key], archive[src.npz_family_key]
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"{raw.key}: {raw.uri}: expected '{src.npz_features_key}' of shape (n, d) and "
            f"'{src.npz_family_key}' of shape (n,), got {x.shape} and {y.shape}"
        )
    return x, y


def _npz_feature_names(x: np.ndarray, src: SourceConfig, raw: RawFile) -> list[str]:
    if src.column_names:
        if len(src.column_names) != x.shape[1]:
            raise ConfigError(
                f"data.source.column_names has {len(src.column_names)} names but {raw.uri} has {x.shape[1]} features"
            )
        return list(src.column_names)
    return [f"x{j}" for j in range(x.shape[1])]


def load_label_map(uri: str, src: SourceConfig, storage: StorageConfig) -> dict[str, str]:
    """A CSV with columns data.source.label_map_from -> label_map_to (e.g. attack -> category)."""
    key = "data.source.label_map"
    raw = raw_file(uri, key, "train", SourceConfig(format="csv", encoding=src.encoding), storage)
    opened = OpenedFile(raw, storage)
    try:
        table = pacsv.read_csv(
            opened.stream,
            read_options=pacsv.ReadOptions(encoding=arrow_encoding(src.encoding)),
            convert_options=pacsv.ConvertOptions(column_types={src.label_map_from: pa.string(), src.label_map_to: pa.string()}),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{key}: {uri}: cannot parse ({exc_summary(exc)})") from None
    finally:
        opened.close()
    for column, setting in ((src.label_map_from, "label_map_from"), (src.label_map_to, "label_map_to")):
        if column not in table.column_names:
            raise DataError(
                f"{key}: {uri}: no column '{column}' (data.source.{setting}); columns are {table.column_names}"
            )
    mapping: dict[str, str] = {}
    for a, b in zip(table.column(src.label_map_from).to_pylist(), table.column(src.label_map_to).to_pylist()):
        a, b = (a or "").strip(), (b or "").strip()
        if not a or not b:
            raise DataError(f"{key}: {uri}: empty entry ({a!r} -> {b!r})")
        if mapping.get(a, b) != b:
            raise DataError(f"{key}: {uri}: label '{a}' maps to both '{mapping[a]}' and '{b}'")
        mapping[a] = b
    return mapping


def check_category_count(column: str, values: set, src: SourceConfig, raw: RawFile) -> None:
    """One line when a categorical column has too many values (serial and parallel prepare alike)."""
    if len(values) > src.max_categories:
        raise DataError(
            f"data.source.categorical_columns: column '{column}' has more than "
            f"data.source.max_categories={src.max_categories} distinct values in {raw.uri}; "
            "is it an id column (drop it) or should categorical_encoding be index?"
        )
