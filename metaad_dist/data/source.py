"""Where a dataset's rows come from. Training code asks for families by name, never for files."""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from metaad_dist.config import DataConfig, StorageConfig
from metaad_dist.data.builtin import BUILTIN_PREFIX, load_builtin
from metaad_dist.data.table import FamilyTable


class DatasetSource(Protocol):
    """A dataset that can read some of its families without touching the others."""

    def family_names(self) -> list[str]: ...

    def read(self, families: Sequence[str]) -> FamilyTable: ...


class BuiltinSource:
    """A small dataset that ships with a dependency; it fits in memory whole."""

    def __init__(self, name: str):
        self._table = load_builtin(name)

    def family_names(self) -> list[str]:
        return sorted(set(self._table.families.tolist()))

    def read(self, families: Sequence[str]) -> FamilyTable:
        return self._table.select(np.isin(self._table.families, list(families)))


def open_source(data: DataConfig, storage: StorageConfig) -> DatasetSource:
    if data.path.startswith(BUILTIN_PREFIX):
        return BuiltinSource(data.path[len(BUILTIN_PREFIX):])
    from metaad_dist.data.prepared import PreparedSource

    return PreparedSource(data.path, storage)
