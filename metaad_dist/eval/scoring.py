"""`metaad score run=<name> input=<table|folder|s3://prefix> output=<folder|file.parquet>`: score new rows.

The input (CSV, CSV.gz or Parquet, local or s3://; one file, or every such file under a folder or
prefix) holds either the raw source columns of the dataset the run was trained on (they are
encoded exactly as `metaad prepare` did, from the encoder recorded in the run) or the model's
encoded feature columns by name. Extra columns are carried through. Output: the input columns
plus `anomaly_score` and `is_anomaly` (score above the validation-chosen threshold; columns of
those names in the input are replaced). With index-encoded categoricals a feature has its source
column's name; such a column is always read as raw categories.

Where it runs: a single file of at most score.in_process_max_bytes is scored here, streamed in
batches (no Ray start-up for 10 rows); anything larger, or a folder or prefix, goes through Ray
Data (eval/score_ray.py). Both read columns with the same types and score with the same model,
so they give the same scores.

Output: `output=<name>.parquet` is one file (one input file, scored here), written to a
temporary sibling and moved into place. Otherwise `output` is a folder of `part-<job>-*.parquet`
files committed by `_SUCCESS.json`, written last (ScoreOutput): a folder without it, or with
part files it does not list, is not a complete result.
"""
from __future__ import annotations

import contextlib
import json
import math
import posixpath
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from metaad_dist.data.storage import Location, first_line, open_location, storage_errors
from metaad_dist.data.table import FLOAT32_MAX, numeric_features
from metaad_dist.errors import DataError

SCORE_COLUMN = "anomaly_score"
FLAG_COLUMN = "is_anomaly"
PATH_COLUMN = "path"  # Ray Data's include_paths column: which input file a row came from
MARKER = "_SUCCESS.json"
MARKER_FORMAT = "metaad-scores"
PART_PREFIX = "part-"
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")
FILE_OUTPUT_SUFFIXES = (".csv", ".gz", ".tsv", ".json", ".txt")  # a file name, but not one we write


# --------------------------------------------------------------------------- features and scores


def feature_matrix(table: pa.Table, trained, encoder: dict | None, where: str) -> tuple[np.ndarray, dict[str, int]]:
    """Encoded features of `table` and, per categorical column, how many rows had a category
    unseen in training.

    The raw source columns win when the table has them all: they go through the run's encoder,
    as prepare did. Why first: with index encoding a categorical feature keeps its source
    column's name, so a raw table also "has" every feature column, yet its values are categories,
    not codes. Otherwise the model's feature columns are taken by name.
    """
    from metaad_dist.data.encoding import FeatureEncoder

    enc = FeatureEncoder(encoder["columns"], encoder["categories"], encoder["encoding"]) if encoder else None
    if enc is not None and all(c in table.column_names for c in enc.columns):
        if enc.feature_names != list(trained.feature_names):
            raise DataError(f"{where}: the run's encoder does not produce the model's features; retrain the run")
        try:
            return enc.encode_matrix(table)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
    if all(c in table.column_names for c in trained.feature_names):
        columns = {c: table.column(c).to_numpy(zero_copy_only=False) for c in trained.feature_names}
        return numeric_features(columns, trained.feature_names, where), {}
    missing = [c for c in trained.feature_names if c not in table.column_names]
    raise DataError(
        f"{where}: {len(missing)} of the model's {len(trained.feature_names)} feature columns are missing "
        f"(first: {missing[:3]}); the table must match the run's manifest features"
    )


def checked_features(table: pa.Table, trained, encoder: dict | None, where: str, first_row: int = 0):
    """feature_matrix, failing in one line on the first non-finite cell (`first_row`: data rows
    before this table), saying why: a value beyond float32's range is finite in the input and
    only infinite once it is a feature."""
    x, unseen = feature_matrix(table, trained, encoder, where)
    bad = ~np.isfinite(x)
    if bad.any():
        rows, columns = np.nonzero(bad)
        i, name = int(rows[0]), trained.feature_names[int(columns[0])]
        raw = table.column(name)[i].as_py() if name in table.column_names else None
        if isinstance(raw, (int, float)) and math.isfinite(raw):
            why = f"{raw:g}, beyond the float32 range of features (|x| <= {FLOAT32_MAX:.4g})"
        else:
            why = "missing" if raw is None and name in table.column_names else f"{x[i, int(columns[0])]}"
        raise DataError(
            f"{where}: data row {first_row + i + 1}: feature '{name}' is {why} ({len(np.unique(rows))} of {len(x)} "
            "rows have NaN, infinite, missing or beyond-float32 values); clean or drop such rows first"
        )
    return x, unseen


def score_table(
    table: pa.Table, trained, threshold: float, where: str, encoder: dict | None = None, device=None,
    first_row: int = 0,
) -> tuple[pa.Table, dict[str, int]]:
    """The table with score and flag columns (replacing columns of those names: re-scoring a
    scored file gives the new scores), and the unseen-category counts of feature_matrix."""
    x, unseen = checked_features(table, trained, encoder, where, first_row)
    scores = trained.anomaly_scores(x, device)
    kept = table.drop_columns([c for c in (SCORE_COLUMN, FLAG_COLUMN) if c in table.column_names])
    scored = kept.append_column(SCORE_COLUMN, pa.array(scores, pa.float32())).append_column(
        FLAG_COLUMN, pa.array(scores > threshold)
    )
    return scored, unseen


def read_types(trained, encoder: dict | None) -> dict[str, pa.DataType]:
    """CSV column types for both paths: fixed, so a later block cannot be inferred differently
    (e.g. int64 then "1.5") and both paths see the same values; categoricals stay text."""
    types = {name: pa.float64() for name in trained.feature_names}
    if encoder:
        types.update({c: pa.float64() for c in encoder["columns"]})
        types.update({c: pa.string() for c in encoder["categories"]})
    return types


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputFile:
    path: str  # inside the input's filesystem
    uri: str  # as the user would name it
    size: int
    kind: str  # csv | parquet

    @property
    def compression(self) -> Optional[str]:
        return "gzip" if self.uri.endswith(".gz") else None


def _kind(name: str) -> Optional[str]:
    name = name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    return "parquet" if name.endswith(".parquet") else None


def list_inputs(uri: str, storage) -> tuple[Location, list[InputFile]]:
    """The input file, or every CSV/Parquet file under a folder or prefix (sorted; names starting
    with '.' or '_' skipped, as pyarrow and Spark do)."""
    location = open_location(uri.rstrip("/") or "/", storage, create_bucket=False)
    with storage_errors(uri):
        info = location.fs.get_file_info(location.base)
        if info.type == pafs.FileType.File:
            if _kind(info.path) is None:
                raise DataError(f"{uri}: unsupported table format; expected .csv, .csv.gz or .parquet")
            return location, [InputFile(info.path, location.uri, info.size, _kind(info.path))]
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"input={uri}: not found")
        infos = location.fs.get_file_info(pafs.FileSelector(location.base, recursive=True))
    files = []
    for i in sorted(infos, key=lambda i: i.path):
        rel = i.path[len(location.base.rstrip("/")) + 1:]
        if i.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in rel.split("/")):
            continue
        if _kind(rel) is not None:
            files.append(InputFile(i.path, location.uri_of(rel), i.size, _kind(rel)))
    if not files:
        raise DataError(f"input={uri}: no .csv, .csv.gz or .parquet files in this folder")
    return location, files


_CSV_CONVERSION = re.compile(r"column #(\d+): Row #(\d+): .*invalid value '(.*)'", re.S)
_CSV_ROW = re.compile(r"Row #(\d+): (.*)", re.S)


def iter_file(f: InputFile, fs: pafs.FileSystem, types: dict, batch_rows: int) -> Iterator[tuple[pa.Table, int]]:
    """(table, data rows before it) per batch of one input file; parse errors as one line naming the
    file and line."""
    names: list[str] = []
    try:
        if f.kind == "parquet":
            with fs.open_input_file(f.path) as handle:
                first = 0
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows):
                    yield pa.Table.from_batches([batch]), first
                    first += batch.num_rows
            return
        with fs.open_input_stream(f.path, compression=f.compression) as stream:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False),  # row numbers in errors
                convert_options=pacsv.ConvertOptions(column_types=types),
            )
            names = reader.schema.names
            first = 0
            for batch in reader:
                yield pa.Table.from_batches([batch]), first
                first += batch.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        text = str(exc)
        match = _CSV_CONVERSION.search(text)
        if match:
            column, line, value = int(match.group(1)), match.group(2), match.group(3)
            names = names or _csv_header(f, fs)  # the error can come from open_csv's first block
            name = names[column] if column < len(names) else f"#{column}"
            raise DataError(
                f"{f.uri}: line {line}: column '{name}' is not numeric (value {value!r}); "
                "declare it in data.source.categorical_columns or data.source.drop_columns"
            ) from None
        match = _CSV_ROW.search(text)
        if match:
            raise DataError(f"{f.uri}: line {match.group(1)}: cannot parse ({first_line(exc)})") from None
        raise DataError(f"{f.uri}: cannot parse ({first_line(exc)})") from None


def _csv_header(f: InputFile, fs) -> list[str]:
    with contextlib.suppress(pa.ArrowInvalid, OSError), fs.open_input_stream(f.path, compression=f.compression) as s:
        line = s.read(1 << 20).split(b"\n", 1)[0].rstrip(b"\r")
        return pacsv.read_csv(pa.BufferReader(line + b"\n")).column_names
    return []


def first_error(files: list[InputFile], fs, trained, encoder, batch_rows: int) -> Optional[DataError]:
    """The exact one-line error of the first bad file and row, found by reading the inputs here
    (no model): how a failed Ray job names what it choked on."""
    types = read_types(trained, encoder)
    for f in files:
        try:
            for table, first in iter_file(f, fs, types, batch_rows):
                checked_features(table, trained, encoder, f.uri, first)
        except DataError as exc:
            return exc
    return None


# --------------------------------------------------------------------------- output


class ScoreOutput:
    """A folder of part files committed by a marker written last.

    Rewriting a folder first deletes its marker (the old result stops being complete), writes the
    new parts under a fresh job id, deletes every other part file, then writes the marker listing
    the parts with their row counts. A killed job leaves parts and no marker.
    """

    def __init__(self, uri: str, storage):
        self.location = open_location(uri, storage)
        self.job = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        foreign = [n for n in self.location.list_children() if not self._ours(n)]
        if foreign:
            raise DataError(
                f"output={self.location.uri}: holds '{foreign[0]}', which is not a metaad score output; "
                "name an empty or new folder"
            )

    @staticmethod
    def _ours(name: str) -> bool:
        return name.startswith(MARKER) or (name.startswith(PART_PREFIX) and name.endswith(".parquet"))

    def begin(self) -> None:
        self.location.delete(MARKER)

    def part_name(self, suffix: str) -> str:
        return f"{PART_PREFIX}{self.job}-{suffix}.parquet"

    def commit(self, info: dict, written: Optional[Sequence[str]] = None) -> dict:
        """Delete every part but this job's, then write the marker; returns it. `written`: the
        parts the job reported as complete (any other part of this job, e.g. left by a retried
        batch, is deleted too)."""
        keep = set(written) if written is not None else None
        parts = []
        for name in self.location.list_children():
            if name.startswith(f"{PART_PREFIX}{self.job}-") and (keep is None or name in keep):
                parts.append(name)
            elif name != MARKER:
                self.location.delete(name)
        if keep is not None and len(parts) != len(keep):
            missing = sorted(keep - set(parts))[0]
            raise DataError(f"output={self.location.uri}: part '{missing}' reported written is not there")
        files, flagged = [], 0
        for name in sorted(parts):
            with storage_errors(self.location.uri_of(name)), self.location.fs.open_input_file(self.location.path(name)) as f:
                flags = pq.read_table(f, columns=[FLAG_COLUMN]).column(FLAG_COLUMN)
            files.append({"path": name, "rows": len(flags)})
            flagged += int(np.asarray(flags).sum())
        marker = {
            "format": MARKER_FORMAT, "job": self.job, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **info, "rows": sum(f["rows"] for f in files), "flagged": flagged, "files": files,
        }
        self.location.write_bytes_atomic(json.dumps(marker, indent=1).encode(), MARKER)
        return marker


def _warn_unseen(where: str, unseen: dict[str, int], rows: int) -> None:
    for column, count in unseen.items():
        print(f"warning: {where}: column '{column}' has a category unseen in training in {count} of "
              f"{rows} rows (encoded as unknown)", file=sys.stderr)


def score_in_process(f: InputFile, fs, sink_location: Location, name: str, trained, payload: dict, batch_rows: int,
                     device) -> tuple[int, int]:
    """Score one file batch by batch into `name` under `sink_location` (a temporary sibling moved
    into place); returns (rows, flagged)."""
    encoder = payload.get("encoder")
    threshold = float(payload["threshold"])
    final = sink_location.path(name)
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    rows = flagged = 0
    unseen_total: dict[str, int] = {}
    writer = None
    with storage_errors(sink_location.uri_of(name), writing=True):
        if not sink_location.is_s3:
            sink_location.fs.create_dir(posixpath.dirname(final), recursive=True)
        try:
            with sink_location.fs.open_output_stream(tmp) as out:
                for table, first in iter_file(f, fs, read_types(trained, encoder), batch_rows):
                    scored, unseen = score_table(table, trained, threshold, f.uri, encoder, device, first)
                    for column, count in unseen.items():
                        unseen_total[column] = unseen_total.get(column, 0) + count
                    if writer is None:
                        writer = pq.ParquetWriter(out, scored.schema)
                    writer.write_table(scored)
                    rows += scored.num_rows
                    flagged += int(np.asarray(scored.column(FLAG_COLUMN)).sum())
                if writer is None:
                    raise DataError(f"{f.uri}: no rows to score")
                writer.close()
            sink_location.fs.move(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                sink_location.fs.delete_file(tmp)
            raise
    _warn_unseen(f.uri, unseen_total, rows)
    return rows, flagged
