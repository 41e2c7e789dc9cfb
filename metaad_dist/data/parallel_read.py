"""`metaad prepare`'s reading and encoding in Ray tasks, one per input file or CSV byte range.

Why byte ranges: one large CSV is the common case, and per-file tasks would leave it on one core.
A plain UTF-8 CSV is cut every data.source.parallel_block_bytes; a range owns the lines that
start inside it (it reads on to the end of its last line), which is safe because the readers
never allow newlines inside values. Compressed, zipped, Parquet, NPZ and non-UTF-8 inputs are
one task per file.

Each task returns the EncodedBatches of its part (batch_encoder.BatchEncoder, the same code the serial
path runs). The driver takes the parts' results strictly in input order, with a bounded number of
tasks in flight, and feeds them to the one shard writer: so row ids, shard layout and shard bytes
are the serial prepare's. Normalisation statistics are merged from the batches' partial sums in
order; category sets, learnt first by a pass of the same tasks, are merged into one vocabulary.

Errors: a task's error names the file but, not knowing how many rows precede its range, not the
row; the driver then counts them (from the earlier parts' results) and re-runs that part here
to raise the serial path's exact one-line error.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from metaad_dist.config import SourceConfig, StorageConfig
from metaad_dist.data.credentials import AwsSecrets, settings_env
from metaad_dist.data.raw_files import RawFile, exc_summary, split_uri
from metaad_dist.data.readers import arrow_encoding, check_category_count, csv_error, csv_read_options, iter_batches
from metaad_dist.data.storage import storage_errors
from metaad_dist.errors import DataError, UserError

SEEK_CHUNK = 1 << 16  # bytes read at a time while looking for the end of a line


@dataclass(frozen=True)
class Part:
    raw: RawFile
    index: int  # of this part within its file
    start: int  # byte range [start, stop) of a CSV; stop < 0: the whole file
    stop: int


class _PartFailed(Exception):
    """A part's task failed: which part, and why."""

    def __init__(self, part: Part, cause: BaseException):
        super().__init__(str(cause))
        self.part, self.cause = part, cause


def user_error_behind(exc: BaseException) -> Optional[UserError]:
    """The innermost UserError behind a Ray failure. Ray wraps a task's exception in a RayTaskError
    that is also an instance of the cause's class but whose text is a traceback: hence innermost."""
    found, cur, seen = None, exc, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, UserError):
            found = cur
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    return found


def _splittable(raw: RawFile, src: SourceConfig) -> bool:
    return raw.kind == "csv" and raw.compression is None and arrow_encoding(src.encoding) == "utf8"


def _line_end(f, pos: int, size: int) -> int:
    """The offset just past the first newline at or after `pos` (the file size if none)."""
    while pos < size:
        chunk = f.read_at(min(SEEK_CHUNK, size - pos), pos)
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(chunk)
    return size


def _range_bytes(part: Part, storage: StorageConfig) -> bytes:
    location, name = split_uri(part.raw.uri, storage)
    with storage_errors(part.raw.uri), location.fs.open_input_file(location.path(name)) as f:
        size = f.size()
        begin = 0 if part.start == 0 else _line_end(f, part.start - 1, size)
        end = size if part.stop >= size else _line_end(f, part.stop - 1, size)
        return f.read_at(end - begin, begin) if end > begin else b""


def _range_batches(part: Part, src, storage, names, types, line_base: int) -> Iterator[pa.RecordBatch]:
    """The serial CSV reader's settings and errors, over one byte range (`line_base`: lines before it)."""
    raw = part.raw
    include = [n for n in names if n in types]
    data = _range_bytes(part, storage)
    if not data:
        return
    bad_rows: list = []

    def on_invalid(row) -> str:
        bad_rows[:] = [None if row.number is None else row.number + line_base, row.text]
        return "error"

    options = csv_read_options(src, src.csv_block_size, names)
    if part.start > 0:
        options.skip_rows = 0  # the header is in the first range only
    try:
        reader = pacsv.open_csv(
            pa.BufferReader(data),
            read_options=options,
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: types[n] for n in include}, include_columns=include,
                strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )
        yield from reader
    except pa.ArrowInvalid as exc:
        raise csv_error(exc, raw, names, include, bad_rows) from None
    except (UnicodeDecodeError, pa.ArrowException) as exc:
        raise DataError(f"{raw.key}: {raw.uri}: cannot read CSV ({exc_summary(exc)})") from None


def part_batches(part: Part, src, storage, names, types, line_base: int = 0) -> Iterator[pa.RecordBatch]:
    if part.stop < 0:
        return iter_batches(part.raw, src, storage, names, types, src.row_group_size)
    return _range_batches(part, src, storage, names, types, line_base)


def encode_part(part: Part, batch_encoder, src, storage, names, types, aws: Optional[AwsSecrets] = None,
                file_row: int = 0, line_base: int = 0) -> list:
    """A part's EncodedBatches (`file_row`, `line_base`: data rows and lines before it, for errors)."""
    if aws is not None:
        aws.install()
    out = []
    for batch in part_batches(part, src, storage, names, types, line_base):
        if batch.num_rows:
            out.append(batch_encoder.encode(part.raw, batch, file_row))
            file_row += batch.num_rows
    return out


def part_categories(part: Part, src, storage, names, categorical: list[str], aws: Optional[AwsSecrets] = None,
                    line_base: int = 0):
    """({column: set of values}, rows) of one part (checked against max_categories here too: bounded memory)."""

    if aws is not None:
        aws.install()
    seen: dict[str, set] = {c: set() for c in categorical}
    types = {c: pa.string() for c in categorical}
    rows = 0
    for batch in part_batches(part, src, storage, names, types, line_base):
        rows += batch.num_rows
        for column in categorical:
            seen[column].update(pc.unique(batch.column(column)).to_pylist())
            check_category_count(column, seen[column], src, part.raw)
    return seen, rows


class ParallelRead:
    """The inputs cut into parts, and Ray tasks over them whose results come back in input order."""

    def __init__(self, inputs: list[RawFile], src: SourceConfig, storage: StorageConfig):
        self.src, self.storage = src, storage
        self.parts: list[Part] = []
        self.total_bytes = 0
        for raw in inputs:
            location, name = split_uri(raw.uri, storage)
            with storage_errors(raw.uri):
                size = location.fs.get_file_info(location.path(name)).size or 0
            self.total_bytes += size
            if _splittable(raw, src) and size > src.parallel_block_bytes:
                starts = range(0, size, src.parallel_block_bytes)
                self.parts += [Part(raw, i, s, min(s + src.parallel_block_bytes, size)) for i, s in enumerate(starts)]
            else:
                self.parts.append(Part(raw, 0, 0, -1))
        self.started_ray = False

    def _ray(self):
        import ray

        from metaad_dist.data.ray_instance import ensure_ray

        self.started_ray = ensure_ray() or self.started_ray
        return ray

    def _in_order(self, fn: Callable, parts: list[Part], *args) -> Iterator[tuple[Part, Any]]:
        """(part, fn(part, *args)) for every part, run as Ray tasks, yielded in part order."""
        ray = self._ray()
        task = ray.remote(fn).options(num_cpus=1, max_retries=0, runtime_env={"env_vars": settings_env()})
        shared = [ray.put(a) for a in args]  # once, not once per task
        aws = AwsSecrets.from_environ()
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        todo, pending = iter(parts), deque()

        def submit() -> None:
            part = next(todo, None)
            if part is not None:
                pending.append((part, task.remote(part, *shared, aws)))

        for _ in range(limit):
            submit()
        try:
            while pending:
                part, ref = pending.popleft()
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the caller decides what to show
                    raise _PartFailed(part, exc) from exc
                submit()
                yield part, result
        finally:
            for _, ref in pending:
                ray.cancel(ref)

    def categories(self, plan) -> dict[str, list[str]]:
        """Category vocabularies of the train files, merged from per-part sets."""
    
        if not plan.categorical:
            return {}
        seen: dict[str, set] = {c: set() for c in plan.categorical}
        train = [p for p in self.parts if p.raw.split == "train"]
        rows_before: dict[str, int] = {}
        try:
            for part, (found, rows) in self._in_order(_categories_task, train, self.src, self.storage, plan.names,
                                                      plan.categorical):
                rows_before[part.raw.uri] = rows_before.get(part.raw.uri, 0) + rows
                for column, values in found.items():
                    seen[column] |= values
                    check_category_count(column, seen[column], self.src, part.raw)
        except _PartFailed as failed:
            cause = user_error_behind(failed.cause)
            if cause is None:
                raise failed.cause from None
            part = failed.part
            part_categories(part, self.src, self.storage, plan.names[part.raw.uri], plan.categorical, None,
                            self._line_base(part, rows_before.get(part.raw.uri, 0)))
            raise cause from None
        return {c: sorted(v for v in seen[c] if v is not None) for c in plan.categorical}

    def encoded(self, plan, batch_encoder) -> Iterator:
        """Every part's EncodedBatches, in input order (what batch_encoder.serial_encoded yields, batched
        differently)."""
        rows_before: dict[str, int] = {}  # data rows of the parts of each file seen so far
        try:
            for part, batches in self._in_order(_encode_task, self.parts, batch_encoder, self.src, self.storage,
                                                plan.names, plan.types):
                rows_before[part.raw.uri] = rows_before.get(part.raw.uri, 0) + sum(b.rows for b in batches)
                yield from batches
        except _PartFailed as failed:
            cause = user_error_behind(failed.cause)
            if cause is None:
                raise failed.cause from None
            self._rerun_here(failed.part, plan, batch_encoder, rows_before.get(failed.part.raw.uri, 0))
            raise cause from None
        finally:
            if self.started_ray:
                import ray

                ray.shutdown()

    def _rerun_here(self, part: Part, plan, batch_encoder, file_row: int) -> None:
        """Re-encode a failed part in this process knowing its first row: raises the exact error."""
        encode_part(part, batch_encoder, self.src, self.storage, plan.names[part.raw.uri], plan.types,
                    None, file_row, self._line_base(part, file_row))

    def _line_base(self, part: Part, file_row: int) -> int:
        """Lines of the file before a byte range (its header and data rows; blank lines not counted)."""
        header = 1 if (self.src.has_header and part.raw.kind == "csv") else 0
        return 0 if part.start == 0 else file_row + header


def _encode_task(part, batch_encoder, src, storage, names, types, aws):
    return encode_part(part, batch_encoder, src, storage, names[part.raw.uri], types, aws)


def _categories_task(part, src, storage, names, categorical, aws):
    return part_categories(part, src, storage, names[part.raw.uri], categorical, aws)

