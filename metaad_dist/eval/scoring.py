"""`metaad score run=<name> input=<table> output=<file.parquet>`: score new rows.

The input (CSV or Parquet, local or s3://) holds either the raw source columns of the dataset
the run was trained on (they are encoded exactly as `metaad prepare` did, from the encoder
recorded in the run) or the model's encoded feature columns by name. Extra columns are
carried through. Output: the input columns plus `anomaly_score` and
`is_anomaly` (score above the validation-chosen threshold; columns of those names in the input
are replaced), written atomically. With index-encoded categoricals a feature has its source
column's name; such a column is always read as raw categories.
"""
from __future__ import annotations

import io
import math
import posixpath
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from metaad_dist.data.storage import open_location
from metaad_dist.data.table import FLOAT32_MAX, numeric_features
from metaad_dist.errors import ConfigError, DataError
from metaad_dist.train.artifacts import load_run
from metaad_dist.train.commands import run_location
from metaad_dist.train.setup import resolve_device

SCORE_COLUMN = "anomaly_score"
FLAG_COLUMN = "is_anomaly"


def read_table(uri: str, storage) -> pa.Table:
    parent, name = posixpath.split(uri.rstrip("/"))
    location = open_location(parent or ".", storage)
    data = location.read_bytes(name)
    try:
        if name.endswith(".parquet"):
            return pq.read_table(io.BytesIO(data))
        if name.endswith((".csv", ".csv.gz")):
            compression = "gzip" if name.endswith(".gz") else None
            return pacsv.read_csv(pa.input_stream(io.BytesIO(data), compression=compression))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{uri}: cannot parse ({str(exc).splitlines()[0]})") from None
    raise DataError(f"{uri}: unsupported table format; expected .csv, .csv.gz or .parquet")


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


def _unscorable(table: pa.Table, x: np.ndarray, names: list[str], where: str) -> DataError:
    """One line for rows whose features are not finite, naming the first cell and why: a value
    beyond float32's range is finite in the input and only infinite once it is a feature."""
    rows, columns = np.nonzero(~np.isfinite(x))
    row, name = int(rows[0]), names[int(columns[0])]
    raw = table.column(name)[row].as_py() if name in table.column_names else None
    if isinstance(raw, (int, float)) and math.isfinite(raw):
        why = f"{raw:g} is beyond the float32 range of features (|x| <= {FLOAT32_MAX:.4g})"
    else:
        why = "missing" if raw is None else f"{raw}"
    return DataError(
        f"{where}: NaN, infinite, missing or beyond-float32 feature values in {len(np.unique(rows))} of {len(x)} "
        f"rows (first: row {row}, column '{name}': {why}); clean or drop those rows first"
    )


def score_table(
    table: pa.Table, trained, threshold: float, where: str, encoder: dict | None = None, device=None
) -> tuple[pa.Table, dict[str, int]]:
    """The table with score and flag columns (replacing columns of those names: re-scoring a
    scored file gives the new scores), and the unseen-category counts of feature_matrix."""
    x, unseen = feature_matrix(table, trained, encoder, where)
    if not np.isfinite(x).all():
        raise _unscorable(table, x, list(trained.feature_names), where)
    scores = trained.anomaly_scores(x, device)
    kept = table.drop_columns([c for c in (SCORE_COLUMN, FLAG_COLUMN) if c in table.column_names])
    scored = kept.append_column(SCORE_COLUMN, pa.array(scores, pa.float32())).append_column(
        FLAG_COLUMN, pa.array(scores > threshold)
    )
    return scored, unseen


def score_command(cfg) -> None:
    if not cfg.input or not cfg.output:
        raise ConfigError("metaad score needs input=<table.csv|table.parquet> and output=<file.parquet>")
    if not str(cfg.output).endswith(".parquet"):
        raise ConfigError(f"output={cfg.output}; expected a .parquet file name (scores are written as Parquet)")
    trained, payload = load_run(run_location(cfg))
    scored, unseen = score_table(
        read_table(cfg.input, cfg.storage), trained, float(payload["threshold"]), cfg.input, payload.get("encoder"),
        resolve_device(cfg.trainer.device),
    )
    for column, rows in unseen.items():
        print(f"warning: {cfg.input}: column '{column}' has a category unseen in training in {rows} of "
              f"{scored.num_rows} rows (encoded as unknown)", file=sys.stderr)
    parent, name = posixpath.split(cfg.output.rstrip("/"))
    buf = pa.BufferOutputStream()
    pq.write_table(scored, buf)
    open_location(parent or ".", cfg.storage).write_bytes_atomic(buf.getvalue().to_pybytes(), name)
    flagged = int(np.asarray(scored.column(FLAG_COLUMN)).sum())
    if not cfg.quiet:
        print(f"scored {scored.num_rows} rows -> {cfg.output} ({flagged} flagged)")
