"""Out-of-core training in one process: a bounded fit sample and an in-process streaming sampler.

For a prepared dataset too large to hold, nothing reads the normal families whole:
- `read_fit_sample` decodes at most `data.fit_sample_rows` rows of the normal families (whole
  row groups, chosen at random across every shard of each family, in proportion to its size),
  keeping their training and validation rows. The scaler, the k-means pseudo-classes, the
  normal memory and the calibration rows are fitted on it. When the normal families hold no
  more rows than that, every row is read, in the in-memory path's order, so the run equals the
  in-memory one exactly.
- `read_rows_by_id` fetches given rows (a validation family's kept rows) from the row groups
  whose row-id statistics say they may hold them.
- `StreamingEpisodeSampler` builds the episodes of `trainer=local` from bounded, refilled
  buffers: the sampler actors' Ray-free core (episodes/buffered.py) with one "actor", this process.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from metaad_dist.config import Config
from metaad_dist.data.manifest import ROW_ID
from metaad_dist.data.scaling import FeatureScaler
from metaad_dist.data.storage import storage_errors
from metaad_dist.data.views import validation_positions
from metaad_dist.episodes.buffered import BufferedEpisodeSampler, FamilyLayout, family_rng
from metaad_dist.episodes.episode import Episode
from metaad_dist.episodes.shard_reader import ShardFiles, ShardReader, features_of
from metaad_dist.episodes.shards import budget_pool, build_plan
from metaad_dist.meta.labels import ClassLabeler

SAMPLE_PURPOSE = 7  # family_rng purpose of the fit sample's row-group choice (1-6 are taken)


@dataclass
class FitSample:
    """Raw rows of the normal families read to fit the run's statistics."""

    train_x: np.ndarray  # training rows, families in data.normal order, row-id order within
    family_index: np.ndarray  # index into data.normal, per training row
    val_x: np.ndarray  # validation rows of the same row groups, same order
    training_rows: int  # training rows of the whole dataset (the sample holds train_x of them)
    rows_read: int  # rows decoded
    complete: bool  # every row group was read: the sample is all training and validation rows


def _chosen_units(layout: FamilyLayout, quota: int, seed: int) -> np.ndarray:
    """Row groups of a family to read, in position order: all when they fit `quota` rows, else
    a seeded random subset of at most `quota` rows (at least one row group)."""
    units = np.flatnonzero(layout.rows > 0)
    if int(layout.rows[units].sum()) <= quota:
        return units
    order = units[family_rng(seed, SAMPLE_PURPOSE, layout.name).permutation(len(units))]
    taken = np.cumsum(layout.rows[order]) <= quota
    taken[0] = True
    return np.sort(order[taken])


def read_fit_sample(files: ShardFiles, layouts: list[FamilyLayout], feature_names: list[str], cap: int,
                    seed: int) -> FitSample:
    """Decode at most `cap` rows (at least one row group per family) of the normal families."""
    total = int(sum(int(layout.rows.sum()) for layout in layouts))
    complete = total <= cap
    columns = [ROW_ID] + list(feature_names)
    train, index, val, read = [], [], [], 0
    for layout in layouts:
        quota = int(layout.rows.sum()) if complete else int(cap * int(layout.rows.sum()) / max(total, 1))
        c = files.counters[layout.name]
        for unit in _chosen_units(layout, quota, seed):
            shard, rg = int(layout.shard[unit]), int(layout.row_group[unit])
            pf = files.file(layout.name, shard)
            with storage_errors(files.uri):
                table = pf.read_row_group(rg, columns=columns, use_threads=False)
            c["row_groups_read"] += 1
            c["rows_read"] += table.num_rows
            c["bytes_read"] += files.chunk_bytes(pf, rg, columns)
            read += table.num_rows
            for batch in table.to_batches():
                ids = batch.column(0).to_numpy()
                is_train = layout.training_ids.contains(ids)
                is_val = layout.validation_ids.contains(ids)
                train.append(features_of(batch, 1, is_train))
                val.append(features_of(batch, 1, is_val))
                index.append(np.full(int(is_train.sum()), layout.index, dtype=np.int64))
                c["rows_kept"] += int(is_train.sum() + is_val.sum())
    d = len(feature_names)
    return FitSample(
        train_x=np.concatenate(train) if train else np.zeros((0, d), dtype=np.float32),
        family_index=np.concatenate(index) if index else np.zeros(0, dtype=np.int64),
        val_x=np.concatenate(val) if val else np.zeros((0, d), dtype=np.float32),
        training_rows=int(sum(layout.training_rows for layout in layouts)),
        rows_read=read,
        complete=complete,
    )


def train_row_ids(files: ShardFiles, source, family: str) -> np.ndarray:
    """Row ids of a family's train rows (all rows without a split column), in row-id order."""
    from metaad_dist.episodes.shards import row_group_units

    ids = []
    for shard, rg, _ in row_group_units(source, files, family):
        unit_ids, split = files.read_ids(family, shard, rg, source.has_split)
        ids.append(unit_ids[split == "train"] if split is not None else unit_ids)
    return np.sort(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)


def read_validation_family(files: ShardFiles, source, family: str, cap: int, seed: int) -> np.ndarray:
    """The raw rows of a validation family the in-memory view keeps (views.validation_positions),
    reading its row-id column and then only the row groups that hold those rows."""
    ids = train_row_ids(files, source, family)
    wanted = ids[validation_positions(len(ids), family, cap, seed)]
    return read_rows_by_id(files, source, family, wanted)


def read_rows_by_id(files: ShardFiles, source, family: str, ids: np.ndarray) -> np.ndarray:
    """Raw features of these rows of `family`, in row-id order."""
    x, _ = budget_pool(source, files, family, ids, len(ids), 0, FeatureScaler("none"))
    return x


class StreamingEpisodeSampler:
    """`episode(index)` for one process from bounded buffers (episodes/buffered.py).

    Built on first use: the plan re-reads the budget pools (a few row groups), the buffers fill
    as episodes need them. Episodes equal the sampler actors' with `sampler.num_actors=1`, and
    the in-memory EpisodeSampler's when every normal family fits `sampler.buffer_rows`.
    """

    def __init__(self, cfg: Config, scaler: FeatureScaler, labeler: ClassLabeler,
                 budget_row_ids: dict[str, np.ndarray], layouts: list[FamilyLayout]):
        self._args = (cfg, scaler, labeler, budget_row_ids, layouts)
        self._sampler: Optional[BufferedEpisodeSampler] = None
        self.reader: Optional[ShardReader] = None

    def _build(self) -> BufferedEpisodeSampler:
        cfg, scaler, labeler, budget_row_ids, layouts = self._args
        settings = dataclasses.replace(_plain(cfg.sampler), num_actors=1)
        plan, self.plan_counters = build_plan(
            cfg.data.path, _plain(cfg.storage), _plain(cfg.data), _plain(cfg.meta), settings, int(cfg.seed),
            scaler.state_dict(), labeler.state_dict(), budget_row_ids, layouts,
        )
        self.reader = ShardReader(plan)
        return BufferedEpisodeSampler(plan, 0, self.reader.read_unit)

    def episode(self, index: int) -> Episode:
        if self._sampler is None:
            self._sampler = self._build()
        return self._sampler.episode(int(index))

    def read_counters(self) -> dict:
        return self.reader.counters if self.reader is not None else {}


def _plain(node):
    """A typed dataclass from an OmegaConf node (the plan pickles plain values)."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_object(node) if isinstance(node, DictConfig) else node

