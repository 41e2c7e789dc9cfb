"""Raw input files for `metaad prepare`: what a configured file is, how to open it, and the
one-line errors every reader shares (a damaged archive, a value of the wrong type).

A file is named by a local path or s3:// URI (data/storage.py); its kind comes from
data.source.format or its suffix. The readers per kind are in data/readers.py (CSV, Parquet,
NPZ) and data/whitespace.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import posixpath
import re
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from metaad_dist.config import SourceConfig, StorageConfig
from metaad_dist.data.storage import Location, open_location, storage_errors
from metaad_dist.errors import ConfigError, DataError, first_line

FORMATS = ("auto", "csv", "parquet", "npz", "whitespace")
CSV_SUFFIXES = (".csv", ".txt", ".data", ".tsv")
HASH_CHUNK = 8 << 20
SHOW_CHARS = 60  # of an offending row or value in an error message


@dataclass(frozen=True)
class RawFile:
    """One configured input file."""

    key: str  # config key naming it, e.g. data.source.train_files[0]
    uri: str  # local path or s3://bucket/key, as configured
    split: str  # "train" or "test"
    kind: str  # csv | zip | parquet | npz | whitespace
    compression: Optional[str]  # gzip for .gz CSVs and whitespace files


def short(text: str) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS] + "..."


def exc_summary(exc: BaseException) -> str:
    return short(first_line(exc))


def detect_kind(uri: str, fmt: str, key: str) -> tuple[str, Optional[str]]:
    if fmt not in FORMATS:
        raise ConfigError(f"data.source.format='{fmt}'; expected one of {list(FORMATS)}")
    name = posixpath.basename(uri).lower()
    gz = name.endswith(".gz")
    stem = name[:-3] if gz else name
    if name.endswith(".zip"):
        return "zip", None
    if fmt == "whitespace":
        return "whitespace", "gzip" if gz else None
    if fmt == "csv" or (fmt == "auto" and (stem.endswith(CSV_SUFFIXES) or gz)):
        return "csv", "gzip" if gz else None
    if fmt == "parquet" or (fmt == "auto" and stem.endswith((".parquet", ".pq"))):
        return "parquet", None
    if fmt == "npz" or (fmt == "auto" and stem.endswith(".npz")):
        return "npz", None
    raise DataError(
        f"{key}: {uri}: cannot tell the format from the name; set data.source.format to csv, parquet or npz"
    )


def split_uri(uri: str, storage: StorageConfig) -> tuple[Location, str]:
    parent, name = posixpath.split(uri.rstrip("/"))
    return open_location(parent or ".", storage, create_bucket=False), name


def raw_file(uri: str, key: str, split: str, src: SourceConfig, storage: StorageConfig) -> RawFile:
    """Check an input exists (one line naming the config key if not) and detect its kind."""
    kind, compression = detect_kind(uri, src.format, key)
    location, name = split_uri(uri, storage)
    with storage_errors(uri):
        info = location.fs.get_file_info(location.path(name))
    if info.type != pafs.FileType.File:
        what = "is a folder, expected a file" if info.type == pafs.FileType.Directory else "file not found"
        raise DataError(f"{key}: {uri}: {what}")
    return RawFile(key=key, uri=uri, split=split, kind=kind, compression=compression)


def file_digest(uri: str, storage: StorageConfig) -> tuple[str, int]:
    """sha256 and size of a file, streamed."""
    location, name = split_uri(uri, storage)
    digest, size = hashlib.sha256(), 0
    with storage_errors(uri), location.fs.open_input_stream(location.path(name)) as f:
        while True:
            chunk = f.read(HASH_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class OpenedFile:
    """An open byte stream of a raw file (the zip member for a zip) and what must be closed after."""

    def __init__(self, raw: RawFile, storage: StorageConfig):
        location, name = split_uri(raw.uri, storage)
        path = location.path(name)
        self._closers = []
        with storage_errors(raw.uri):
            if raw.kind == "zip":
                handle = location.fs.open_input_file(path)
                self._closers.append(handle)
                try:
                    archive = zipfile.ZipFile(handle)
                except zipfile.BadZipFile:
                    raise DataError(f"{raw.key}: {raw.uri}: not a valid zip archive") from None
                self._closers.append(archive)
                members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
                if len(members) != 1:
                    raise DataError(
                        f"{raw.key}: {raw.uri}: expected a zip holding one CSV, found {len(members)} files"
                    )
                self.stream = archive.open(members[0])
            elif raw.kind in ("csv", "whitespace"):
                self.stream = location.fs.open_input_stream(path, compression=raw.compression)
            else:
                self.stream = location.fs.open_input_file(path)
        self._closers.insert(0, self.stream)

    def close(self) -> None:
        for c in self._closers:
            try:
                c.close()
            except Exception:  # closing after an error must not hide the error
                pass


@contextlib.contextmanager
def damaged(raw: "RawFile") -> Iterator[None]:
    """Decompression and truncation errors (a cut .gz, a corrupt zip member) as one line."""
    try:
        yield
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{raw.key}: {raw.uri}: cannot read ({exc_summary(exc)}); is the file complete and of its format?") from None


def compile_pattern(pattern: str, key: str) -> "re.Pattern[str]":
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{key}={pattern!r}; expected a non-empty regular expression")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{key}={pattern!r}: not a regular expression ({exc})") from None


def cast_batch(batch: pa.RecordBatch, types: dict[str, pa.DataType], raw: RawFile) -> pa.RecordBatch:
    """Cast each column to its target type, naming the column and a bad value on failure."""
    arrays = []
    for name, column in zip(batch.schema.names, batch.columns):
        target = types[name]
        if column.type == target:
            arrays.append(column)
            continue
        try:
            if pa.types.is_string(target) and not pa.types.is_string(column.type):
                arrays.append(pc.cast(column, pa.string()))
            else:
                arrays.append(pc.cast(column, target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = _first_bad(column, target)
            raise DataError(
                f"{raw.key}: {raw.uri}: column '{name}' holds {bad!r} where a number is expected; fix the "
                "value, or list the column in data.source.categorical_columns or drop_columns"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _first_bad(column: pa.Array, target: pa.DataType) -> str:
    for value in column.to_pylist():
        try:
            pc.cast(pa.array([value]), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return short(value)
    return "?"
