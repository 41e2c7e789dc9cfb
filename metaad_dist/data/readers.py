"""Streaming readers for raw input tables: CSV, CSV.gz, a zip holding one CSV, Parquet, NPZ, and
headerless whitespace-separated numbers (``format: whitespace``, e.g. the Tennessee Eastman files).

Every reader yields Arrow record batches of a bounded size with the requested columns cast to
the requested types, from a local path or s3:// (same storage layer as everything else).
Parse problems become one-line DataErrors that name the file, the column and the value.
NPZ is the exception to streaming: numpy loads an archive member whole; so is a whitespace file
stored transposed (``data.source.transpose_files``). Where a table has no family column,
``data.source.family_rules`` derive each row's family from its file name and row range, and the
reader adds that column, so the rest of `metaad prepare` sees an ordinary family column.
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import posixpath
import re
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from metaad_dist.config import SourceConfig, StorageConfig
from metaad_dist.data.storage import Location, open_location, storage_errors
from metaad_dist.errors import ConfigError, DataError

FORMATS = ("auto", "csv", "parquet", "npz", "whitespace")
CSV_SUFFIXES = (".csv", ".txt", ".data", ".tsv")
HASH_CHUNK = 8 << 20
PEEK_BLOCK = 1 << 20
SHOW_CHARS = 60  # of an offending row or value in an error message


@dataclass(frozen=True)
class RawFile:
    """One configured input file."""

    key: str  # config key naming it, e.g. data.source.train_files[0]
    uri: str  # local path or s3://bucket/key, as configured
    split: str  # "train" or "test"
    kind: str  # csv | zip | parquet | npz | whitespace
    compression: Optional[str]  # gzip for .gz CSVs and whitespace files


def _short(text: str) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS] + "..."


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


class _Opened:
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


def _arrow_encoding(encoding: str) -> str:
    # Arrow's CSV reader decodes UTF-8 itself and skips a UTF-8 byte-order mark.
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig"):
        return "utf8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"data.source.encoding='{encoding}'; expected a Python codec name such as utf-8 or latin-1") from None
    return encoding


@contextlib.contextmanager
def _damaged(raw: "RawFile") -> Iterator[None]:
    """Decompression and truncation errors (a cut .gz, a corrupt zip member) as one line."""
    try:
        yield
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{raw.key}: {raw.uri}: cannot read ({_first_line(exc)}); is the file complete and of its format?") from None


def _csv_read_options(src: SourceConfig, block_size: int, names: Optional[list[str]]) -> pacsv.ReadOptions:
    kwargs: dict = {"block_size": block_size, "encoding": _arrow_encoding(src.encoding), "use_threads": False}  # row numbers in parse errors; no slower here
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
        width = _whitespace_width(raw, src, storage)
        if not src.column_names:
            return [f"x{j}" for j in range(width)]
        if len(src.column_names) != width:
            raise DataError(
                f"{raw.key}: {raw.uri}: {width} columns{' (after transposing)' if _transposed(raw, src) else ''}, "
                f"but data.source.column_names has {len(src.column_names)} names"
            )
        return list(src.column_names)
    if _transposed(raw, src):
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
        opened = _Opened(raw, storage)
        try:
            with _damaged(raw):
                head = opened.stream.read(PEEK_BLOCK)
        finally:
            opened.close()
        line = head.split(b"\n", 1)[0]
        if len(line) == len(head) == PEEK_BLOCK:
            raise DataError(f"{raw.key}: {raw.uri}: no end of the header line in the first {PEEK_BLOCK} bytes")
        try:
            names = list(pacsv.read_csv(
                io.BytesIO(line.rstrip(b"\r") + b"\n"),
                read_options=pacsv.ReadOptions(encoding=_arrow_encoding(src.encoding)),
            ).column_names)
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise DataError(f"{raw.key}: {raw.uri}: cannot read a CSV header ({_first_line(exc)})") from None
        if not line.strip() or not names:
            raise DataError(f"{raw.key}: {raw.uri}: empty file, expected a CSV header")
        return names
    if raw.kind == "parquet":
        opened = _Opened(raw, storage)
        try:
            return list(pq.ParquetFile(opened.stream).schema_arrow.names)
        except pa.ArrowInvalid as exc:
            raise DataError(f"{raw.key}: {raw.uri}: not a Parquet file ({_first_line(exc)})") from None
        finally:
            opened.close()
    x, _ = _load_npz(raw, src, storage)
    return _npz_feature_names(x, src, raw) + [src.family_column]


def _first_line(exc: BaseException) -> str:
    return _short(next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__))


_CSV_CONVERSION = re.compile(r"column #(\d+): .*conversion error to (\w+): invalid value '(.*)'", re.S)
_CSV_COLUMNS = re.compile(r"Expected (\d+) columns, got (\d+)")


def _csv_error(exc: BaseException, raw: RawFile, names: list[str], include: list[str], bad_rows: list) -> DataError:
    text = str(exc)
    match = _CSV_CONVERSION.search(text)
    if match:
        index = int(match.group(1))
        column = names[index] if index < len(names) else f"#{index}"  # Arrow counts the file's columns
        return DataError(
            f"{raw.key}: {raw.uri}: column '{column}' holds text {_short(match.group(3))!r} where a number is "
            "expected; fix the value, or list the column in data.source.categorical_columns or drop_columns"
        )
    match = _CSV_COLUMNS.search(text)
    if match:
        where = f"line {bad_rows[0]}" if bad_rows and bad_rows[0] is not None else "a row"
        row = f": {_short(bad_rows[1])!r}" if bad_rows and len(bad_rows) > 1 else ""
        return DataError(
            f"{raw.key}: {raw.uri}: ragged row at {where}: expected {match.group(1)} fields, "
            f"got {match.group(2)}{row}"
        )
    return DataError(f"{raw.key}: {raw.uri}: cannot parse CSV ({_first_line(exc)})")


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
    with _damaged(raw):
        if not src.family_rules:
            yield from _iter_kind(raw, src, storage, names, include, types, batch_rows)
            return
        # The family column is the reader's (last in `names`): read the rest, then add it.
        family = src.family_column
        file_names, file_include = names[:-1], [n for n in include if n != family]
        labeler = _RowFamilies(raw, family_rules(src)) if family in types else None
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
        yield from _iter_whitespace(raw, src, storage, names, include, types, batch_rows)
    elif raw.kind in ("csv", "zip"):
        yield from _iter_csv(raw, src, storage, names, include, types)
    elif raw.kind == "parquet":
        opened = _Opened(raw, storage)
        try:
            for batch in pq.ParquetFile(opened.stream).iter_batches(batch_size=batch_rows, columns=include):
                yield cast_batch(batch, types, raw)
        except pa.ArrowInvalid as exc:
            raise DataError(f"{raw.key}: {raw.uri}: cannot read Parquet ({_first_line(exc)})") from None
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

    opened = _Opened(raw, storage)
    try:
        reader = pacsv.open_csv(
            opened.stream,
            read_options=_csv_read_options(src, src.csv_block_size, names),
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
        raise _csv_error(exc, raw, names, include, bad_rows) from None
    except (UnicodeDecodeError, pa.ArrowException) as exc:
        raise DataError(f"{raw.key}: {raw.uri}: cannot read CSV ({_first_line(exc)})") from None
    finally:
        opened.close()


# --------------------------------------------------------------------------- whitespace files


def _transposed(raw: RawFile, src: SourceConfig) -> bool:
    name = posixpath.basename(raw.uri)
    for i, pattern in enumerate(src.transpose_files):
        if _compile(pattern, f"data.source.transpose_files[{i}]").search(name):
            return True
    return False


def _compile(pattern: str, key: str) -> "re.Pattern[str]":
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{key}={pattern!r}; expected a non-empty regular expression")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{key}={pattern!r}: not a regular expression ({exc})") from None


def _whitespace_lines(raw: RawFile, src: SourceConfig, storage: StorageConfig) -> Iterator[tuple[int, list[bytes]]]:
    """(1-based line number of the first, non-blank lines) per block of about csv_block_size bytes."""
    opened = _Opened(raw, storage)
    try:
        rest, line_no = b"", 1
        while True:
            chunk = opened.stream.read(src.csv_block_size)
            data = rest + chunk
            cut = len(data) if not chunk else data.rfind(b"\n") + 1
            block, rest = data[:cut], data[cut:]
            lines = block.split(b"\n")
            if lines and not lines[-1]:
                lines.pop()
            numbered = [(line_no + i, line) for i, line in enumerate(lines) if line.strip()]
            line_no += len(lines)
            if numbered:
                yield numbered
            if not chunk:
                return
    finally:
        opened.close()


def _parse_whitespace(raw: RawFile, numbered: list, width: Optional[int]) -> np.ndarray:
    """float64 rows of one block; ragged rows and non-numbers are one line naming the line."""
    tokens = [line.split() for _, line in numbered]
    width = len(tokens[0]) if width is None else width
    for (line_no, line), row in zip(numbered, tokens):
        if len(row) != width:
            raise DataError(
                f"{raw.key}: {raw.uri}: ragged row at line {line_no}: expected {width} fields, got {len(row)}: "
                f"{_short(line.decode(errors='replace'))!r}"
            )
    try:
        return np.array([t for row in tokens for t in row]).astype(np.float64).reshape(len(tokens), width)
    except ValueError:
        for (line_no, _), row in zip(numbered, tokens):
            for value in row:
                try:
                    float(value)
                except ValueError:
                    raise DataError(
                        f"{raw.key}: {raw.uri}: line {line_no} holds {_short(value.decode(errors='replace'))!r} "
                        "where a number is expected (format=whitespace files hold numbers only)"
                    ) from None
        raise


def _whitespace_matrix(raw: RawFile, src: SourceConfig, storage: StorageConfig) -> np.ndarray:
    """A whole whitespace file as stored (transposed files cannot stream)."""
    parts, width = [], None
    for numbered in _whitespace_lines(raw, src, storage):
        parts.append(_parse_whitespace(raw, numbered, width))
        width = parts[0].shape[1]
    if not parts:
        raise DataError(f"{raw.key}: {raw.uri}: empty file, expected rows of numbers")
    return np.concatenate(parts)


def _whitespace_width(raw: RawFile, src: SourceConfig, storage: StorageConfig) -> int:
    with _damaged(raw):
        if _transposed(raw, src):
            return len(_whitespace_matrix(raw, src, storage))
        for numbered in _whitespace_lines(raw, src, storage):
            return len(numbered[0][1].split())
    raise DataError(f"{raw.key}: {raw.uri}: empty file, expected rows of numbers")


def _iter_whitespace(raw, src, storage, names, include, types, batch_rows) -> Iterator[pa.RecordBatch]:
    if _transposed(raw, src):
        blocks: Iterator[np.ndarray] = iter([_whitespace_matrix(raw, src, storage).T])
    else:
        blocks = (_parse_whitespace(raw, numbered, len(names)) for numbered in _whitespace_lines(raw, src, storage))
    wanted = [(j, n) for j, n in enumerate(names) if n in types]
    for x in blocks:
        for start in range(0, len(x), batch_rows):
            part = x[start:start + batch_rows]
            batch = pa.RecordBatch.from_arrays([pa.array(part[:, j]) for j, _ in wanted], names=[n for _, n in wanted])
            yield cast_batch(batch, types, raw)


# --------------------------------------------------------------------------- family rules


@dataclass(frozen=True)
class _Rule:
    pattern: "re.Pattern[str]"
    family: str
    start: int
    stop: Optional[int]  # None: to the end of the file
    key: str


def family_rules(src: SourceConfig) -> list[_Rule]:
    """data.source.family_rules, checked: one-line ConfigErrors naming the rule's key."""
    rules = []
    for i, rule in enumerate(src.family_rules):
        key = f"data.source.family_rules[{i}]"
        pattern = _compile(rule.match, f"{key}.match")
        if not str(rule.family).strip():
            raise ConfigError(f"{key}.family is empty; expected the family of the rows this rule covers")
        rows = list(rule.rows)
        if rows and not (len(rows) == 2 and 0 <= rows[0] < rows[1]):
            raise ConfigError(f"{key}.rows={rows}; expected [] (every row) or [start, stop) with 0 <= start < stop")
        try:
            _check_template(pattern, rule.family)
        except (re.error, IndexError) as exc:
            raise ConfigError(f"{key}.family={rule.family!r}: {exc} (groups of {key}.match={rule.match!r})") from None
        rules.append(_Rule(pattern, rule.family, rows[0] if rows else 0, rows[1] if rows else None, key))
    return rules


def _check_template(pattern: "re.Pattern[str]", template: str) -> None:
    """A group reference (\\N, \\g<N>, \\g<name>) that `pattern` lacks, as re.error, before any file is read."""
    for ref in re.finditer(r"\\(\d+)|\\g<(\w+)>", template):
        group = ref.group(1) or ref.group(2)
        known = int(group) <= pattern.groups if group.isdigit() else group in pattern.groupindex
        if not known:
            raise re.error(f"no group {group!r} in the pattern")


class _RowFamilies:
    """The family of each row of one file under the rules whose `match` its name matches."""

    def __init__(self, raw: RawFile, rules: list[_Rule]):
        name = posixpath.basename(raw.uri)
        self.raw = raw
        self.rules = []
        for rule in rules:
            found = rule.pattern.search(name)
            if found is not None:
                self.rules.append((rule, found.expand(rule.family).strip()))

    def families(self, first: int, n: int) -> pa.Array:
        """Families of data rows first .. first + n - 1 (0-based within the file)."""
        rows = np.arange(first, first + n)
        out = np.full(n, None, dtype=object)
        for rule, family in self.rules:
            hit = (out == None) & (rows >= rule.start) & (rows < (rule.stop if rule.stop is not None else first + n))  # noqa: E711
            out[hit] = family
        if n and (out == None).any():  # noqa: E711
            row = int(rows[np.flatnonzero(out == None)[0]])  # noqa: E711
            covering = ", ".join(r.key for r, _ in self.rules) or "none"
            raise DataError(
                f"{self.raw.key}: {self.raw.uri}: data row {row} (0-based) is covered by no data.source.family_rules "
                f"entry (rules matching this file name: {covering})"
            )
        return pa.array(out.tolist(), pa.string())


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
            return _short(value)
    return "?"


def _load_npz(raw: RawFile, src: SourceConfig, storage: StorageConfig) -> tuple[np.ndarray, np.ndarray]:
    location, name = split_uri(raw.uri, storage)
    data = location.read_bytes(name)
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{raw.key}: {raw.uri}: not a valid NPZ archive ({_first_line(exc)})") from None
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
    opened = _Opened(raw, storage)
    try:
        table = pacsv.read_csv(
            opened.stream,
            read_options=pacsv.ReadOptions(encoding=_arrow_encoding(src.encoding)),
            convert_options=pacsv.ConvertOptions(column_types={src.label_map_from: pa.string(), src.label_map_to: pa.string()}),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{key}: {uri}: cannot parse ({_first_line(exc)})") from None
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
