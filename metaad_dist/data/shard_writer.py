"""Shard writing for `metaad prepare`: per-family Parquet shards with bounded row groups, hashed as written.

The sha256 of every shard is computed from the bytes as they stream out (no second read), so the
manifest can name each shard's digest and readers can verify what they load (data/storage.py).
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from metaad_dist.config import SourceConfig
from metaad_dist.data.manifest import FAMILY_DIR, RAW_LABEL, ROW_ID, SPLIT
from metaad_dist.data.storage import Location

SINK_BUFFER_BYTES = 8 << 20  # C++-side buffer in front of the hashing sink of each open shard


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
