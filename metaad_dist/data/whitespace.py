"""Headerless whitespace-separated numbers (``data.source.format: whitespace``, e.g. the Tennessee
Eastman files): streamed in blocks of about data.source.csv_block_size bytes, except a file
stored transposed (``data.source.transpose_files``), which must be read whole to be turned.
"""
from __future__ import annotations

import posixpath
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from metaad_dist.config import SourceConfig, StorageConfig
from metaad_dist.data.raw_files import OpenedFile, RawFile, cast_batch, compile_pattern, damaged, short
from metaad_dist.errors import DataError


def is_transposed(raw: RawFile, src: SourceConfig) -> bool:
    name = posixpath.basename(raw.uri)
    for i, pattern in enumerate(src.transpose_files):
        if compile_pattern(pattern, f"data.source.transpose_files[{i}]").search(name):
            return True
    return False


def _whitespace_lines(raw: RawFile, src: SourceConfig, storage: StorageConfig) -> Iterator[tuple[int, list[bytes]]]:
    """(1-based line number of the first, non-blank lines) per block of about csv_block_size bytes."""
    opened = OpenedFile(raw, storage)
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
                f"{short(line.decode(errors='replace'))!r}"
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
                        f"{raw.key}: {raw.uri}: line {line_no} holds {short(value.decode(errors='replace'))!r} "
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


def whitespace_width(raw: RawFile, src: SourceConfig, storage: StorageConfig) -> int:
    with damaged(raw):
        if is_transposed(raw, src):
            return len(_whitespace_matrix(raw, src, storage))
        for numbered in _whitespace_lines(raw, src, storage):
            return len(numbered[0][1].split())
    raise DataError(f"{raw.key}: {raw.uri}: empty file, expected rows of numbers")


def iter_whitespace(raw, src, storage, names, include, types, batch_rows) -> Iterator[pa.RecordBatch]:
    if is_transposed(raw, src):
        blocks: Iterator[np.ndarray] = iter([_whitespace_matrix(raw, src, storage).T])
    else:
        blocks = (_parse_whitespace(raw, numbered, len(names)) for numbered in _whitespace_lines(raw, src, storage))
    wanted = [(j, n) for j, n in enumerate(names) if n in types]
    for x in blocks:
        for start in range(0, len(x), batch_rows):
            part = x[start:start + batch_rows]
            batch = pa.RecordBatch.from_arrays([pa.array(part[:, j]) for j, _ in wanted], names=[n for _, n in wanted])
            yield cast_batch(batch, types, raw)
