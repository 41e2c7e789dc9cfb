"""The sampler actors' plan: who reads which row groups of a prepared dataset (reads: shard_reader.py).

`build_plan` reads the row-id column (and split column) of the normal families to place their
seed-split training rows (data/views.py, same functions) in row groups, and the budget rows of
the meta families (the only meta rows ever kept), counting what it touches per family
(shard_reader.COUNTERS). Validation and held-out families are never opened.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Optional

import numpy as np
import pyarrow.parquet as pq

from metaad_dist.config import DataConfig, MetaConfig, SamplerConfig, StorageConfig
from metaad_dist.data.manifest import ROW_ID, family_shards
from metaad_dist.data.prepared import PreparedSource
from metaad_dist.data.roles import FamilyRoles
from metaad_dist.data.scaling import FeatureScaler
from metaad_dist.data.views import budget_positions, check_meta_config, split_masks
from metaad_dist.episodes.buffered import (
    FamilyLayout,
    IdSet,
    SamplerPlan,
    assign_units,
    refill_period,
)
from metaad_dist.episodes.shard_reader import ShardFiles, features_of
from metaad_dist.errors import ConfigError, DataError
from metaad_dist.meta.labels import ClassLabeler


# --------------------------------------------------------------------------- the plan


def check_sampler(s: SamplerConfig) -> None:
    for key in ("num_actors", "buffer_rows", "batch_rows", "prefetch", "episodes_per_call"):
        if getattr(s, key) < 1:
            raise ConfigError(f"sampler.{key}={getattr(s, key)}; expected a positive integer")
    if not 0.0 < s.refill_fraction <= 1.0:
        raise ConfigError(f"sampler.refill_fraction={s.refill_fraction}; expected a value in (0, 1]")
    if s.reuse <= 0:
        raise ConfigError(f"sampler.reuse={s.reuse}; expected a positive number")
    if s.max_restarts < -1:
        raise ConfigError(f"sampler.max_restarts={s.max_restarts}; expected -1 (unlimited) or >= 0")
    if s.actor_cpus < 0:
        raise ConfigError(f"sampler.actor_cpus={s.actor_cpus}; expected >= 0")


def row_group_units(source: PreparedSource, files: ShardFiles, family: str) -> list[tuple[int, int, int]]:
    """(shard index, row group, rows) of every row group of a family, in shard order."""
    index = {s["path"]: i for i, s in enumerate(source.manifest["shards"])}
    out = []
    for shard in family_shards(source.manifest, family):
        i = index[shard["path"]]
        pf = files.file(family, i)
        for rg in range(pf.metadata.num_row_groups):
            out.append((i, rg, pf.metadata.row_group(rg).num_rows))
    return out


def _normal_layout(source, files, family: str, index: int, offset: int, data: DataConfig, seed: int,
                   official: bool) -> FamilyLayout:
    """The layout of a normal family, in memory bounded by bits per row (not the row ids).

    Two passes over the row-id (and split) column, one row group at a time: the first counts
    the pool rows of each unit (the footers' row counts when there is no official split) and the
    id range; the second marks the training and validation ids in packed bit sets.
    """
    units = row_group_units(source, files, family)
    pool_counts, bounds, footers = [], [], {}
    for shard, rg, rows in units:
        if shard not in footers:  # one open per shard: the row-id statistics are in its footer
            footers[shard] = files.file(family, shard)
        known = _row_group_range(footers[shard], rg)
        if official or known is None:
            ids, split = files.read_ids(family, shard, rg, source.has_split)
            pool_counts.append(int((split == "train").sum()) if official else len(ids))
            bounds.append((int(ids.min()), int(ids.max())) if len(ids) else None)
        else:
            pool_counts.append(int(rows))
            bounds.append(known if rows else None)
    spans = [b for b in bounds if b is not None]
    lo = min(b[0] for b in spans) if spans else 0
    hi = max(b[1] for b in spans) if spans else -1
    train_mask, val_mask = split_masks(int(sum(pool_counts)), family, data, seed, official)
    train_bits = np.zeros(max(0, hi - lo + 1), dtype=bool)
    val_bits = np.zeros_like(train_bits)
    eligible = np.zeros(len(units), dtype=np.int64)
    at, previous = 0, None
    for u, (shard, rg, _) in enumerate(units):
        ids, split = files.read_ids(family, shard, rg, source.has_split)
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all() or (previous is not None and len(ids) and ids[0] <= previous):
            raise DataError(
                f"{source.uri}: rows of family '{family}' are not in row-id order across its shards; re-run metaad prepare"
            )
        previous = int(ids[-1]) if len(ids) else previous
        pool_ids = ids[split == "train"] if official else ids
        k = len(pool_ids)
        is_train, is_val = train_mask[at:at + k], val_mask[at:at + k]
        train_bits[pool_ids[is_train] - lo] = True
        val_bits[pool_ids[is_val] - lo] = True
        eligible[u] = int(is_train.sum())
        at += k
    first_position = offset + np.concatenate([[0], np.cumsum(eligible)[:-1]]).astype(np.int64)
    return FamilyLayout(
        name=family,
        index=index,
        shard=np.array([u[0] for u in units], dtype=np.int64),
        row_group=np.array([u[1] for u in units], dtype=np.int64),
        rows=np.array([u[2] for u in units], dtype=np.int64),
        eligible=eligible,
        first_position=first_position,
        training_ids=IdSet(lo, len(train_bits), np.packbits(train_bits)),
        validation_ids=IdSet(lo, len(val_bits), np.packbits(val_bits)),
    )


def _row_group_range(pf: pq.ParquetFile, row_group: int) -> Optional[tuple[int, int]]:
    """(min, max) row id of a row group from its statistics, None when it has none."""
    meta = pf.metadata.row_group(row_group)
    for i in range(meta.num_columns):
        col = meta.column(i)
        if col.path_in_schema == ROW_ID:
            stats = col.statistics
            if stats is not None and stats.has_min_max:
                return int(stats.min), int(stats.max)
    return None


def budget_pool(source, files, family: str, given: Optional[np.ndarray], budget: int, seed: int,
                 scaler: FeatureScaler) -> tuple[np.ndarray, np.ndarray]:
    """(scaled features, row ids) of a meta family's budget pool, reading only row groups that hold it."""
    units = row_group_units(source, files, family)
    if given is None:  # draw it as the training view does: from the family's train rows
        ids = []
        for shard, rg, _ in units:
            unit_ids, split = files.read_ids(family, shard, rg, source.has_split)
            ids.append(unit_ids[split == "train"] if split is not None else unit_ids)
        train = np.sort(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)
        wanted = train[budget_positions(len(train), family, budget, seed)]
    else:
        wanted = np.unique(np.asarray(given, dtype=np.int64))
    columns = [ROW_ID] + source.feature_names
    found_x, found_ids = [], []
    for shard, rg, _ in units:
        pf = files.file(family, shard)
        bounds = _row_group_range(pf, rg)
        if bounds is not None and not ((wanted >= bounds[0]) & (wanted <= bounds[1])).any():
            continue  # statistics say no budget row lies here: never fetched
        table = files.read_row_group(pf, family, shard, rg, columns, "rows_read")
        for batch in table.to_batches():
            ids = batch.column(0).to_numpy()
            keep = np.isin(ids, wanted)
            if keep.any():
                found_ids.append(ids[keep])
                found_x.append(features_of(batch, 1, keep))
                files.counters[family]["rows_kept"] += int(keep.sum())
    ids = np.concatenate(found_ids) if found_ids else np.zeros(0, dtype=np.int64)
    if len(ids) != len(wanted):
        missing = np.setdiff1d(wanted, ids)[:3].tolist()
        raise DataError(f"budget row ids {missing} are not rows of family '{family}' in {source.uri}")
    x = np.concatenate(found_x) if found_x else np.zeros((0, len(source.feature_names)), dtype=np.float32)
    order = np.argsort(ids, kind="stable")
    return scaler.transform(x[order]), ids[order]


def normal_layouts(source: PreparedSource, files: "ShardFiles", roles: FamilyRoles, data: DataConfig,
                   seed: int) -> list[FamilyLayout]:
    """Where the training (and validation) rows of every normal family lie, in data.normal order."""
    layouts, offset = [], 0
    for i, family in enumerate(roles.normal):
        # As views.has_test_rows: a normal family with official test rows trains on its train rows.
        official = source.has_split and int(source.manifest["families"][family].get("test_rows", 0)) > 0
        layout = _normal_layout(source, files, family, i, offset, data, seed, official)
        layouts.append(layout)
        offset += layout.training_rows
    return layouts


def _fingerprint(parts: dict[str, Any]) -> str:
    def plain(v):
        if hasattr(v, "numpy"):
            v = v.numpy()
        if isinstance(v, np.ndarray):
            return hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in sorted(v.items())}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return hashlib.sha256(json.dumps(plain(parts), sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_plan(
    path: str,
    storage: StorageConfig,
    data: DataConfig,
    meta: MetaConfig,
    sampler: SamplerConfig,
    seed: int,
    scaler_state: dict,
    labeler_state: dict,
    budget_row_ids: Optional[dict[str, np.ndarray]] = None,
    layouts: Optional[list[FamilyLayout]] = None,
) -> tuple[SamplerPlan, dict]:
    """The plan of a sampler pool and the counters of what building it read.

    `layouts` (normal_layouts) saves reading the row ids again when the caller has them."""
    check_meta_config(meta)
    check_sampler(sampler)
    source = PreparedSource(path, storage)
    roles = FamilyRoles.from_config(data, source.family_names())
    manifest = source.manifest
    files = ShardFiles.of(source, storage)
    paths = files.paths
    scaler = FeatureScaler.from_state_dict(scaler_state)
    labeler = ClassLabeler.from_state_dict(labeler_state)
    if labeler.num_normal_families != len(roles.normal):
        raise ConfigError(
            f"data.normal has {len(roles.normal)} families but the labeler was fitted for "
            f"{labeler.num_normal_families}; pass the run's ClassLabeler"
        )
    if layouts is None:
        layouts = normal_layouts(source, files, roles, data, seed)
    # Actors filter streamed rows by their training ids alone: leave the validation ids behind.
    layouts = [dataclasses.replace(layout, validation_ids=None) for layout in layouts]
    budget_x, budget_ids = {}, {}
    given = budget_row_ids or {}
    unknown = sorted(set(given) - set(roles.meta))
    if unknown:
        raise ConfigError(f"budget_row_ids: family '{unknown[0]}' is not in data.meta {list(roles.meta)}")
    for family in roles.meta:
        budget_x[family], budget_ids[family] = budget_pool(
            source, files, family, given.get(family) if budget_row_ids is not None else None,
            meta.budget, seed, scaler)
        if len(budget_ids[family]) == 0:
            raise ConfigError(f"data.meta: family '{family}' has no training rows to draw shots from")
    refill = max(1, int(round(sampler.refill_fraction * sampler.buffer_rows)))
    owned_by_family = [assign_units(layout, sampler.num_actors, sampler.buffer_rows, seed) for layout in layouts]
    owned = [[owned_by_family[f][a] for f in range(len(layouts))] for a in range(sampler.num_actors)]
    check_candidates(layouts, owned, meta, sampler)
    plan = SamplerPlan(
        seed=seed,
        meta=meta,
        num_actors=sampler.num_actors,
        buffer_rows=sampler.buffer_rows,
        refill_rows=refill,
        refill_period=refill_period(meta, refill, sampler.num_actors, sampler.reuse),
        normal=layouts,
        budget_x=budget_x,
        budget_row_ids=budget_ids,
        owned=owned,
        uri=source.uri,
        storage=storage,
        shard_paths=paths,
        shard_check=source.check,
        feature_names=list(source.feature_names),
        scaler_state=scaler_state,
        labeler_state=labeler_state,
        batch_rows=sampler.batch_rows,
        families=source.family_names(),
    )
    plan.fingerprint = _fingerprint({
        "seed": seed, "dataset": [source.uri, manifest["shard_root"]], "roles": [roles.normal, roles.meta],
        "split": [data.val_fraction, data.test_fraction],
        "meta": [meta.n_support, meta.n_query, meta.k_shot, meta.budget, meta.normal_per_episode,
                 meta.meta_per_episode],
        "sampler": [sampler.num_actors, sampler.buffer_rows, sampler.refill_fraction, sampler.reuse],
        "budget": budget_ids, "scaler": scaler_state, "labeler": labeler_state,
    })
    return plan, {f: dict(c) for f, c in files.counters.items()}


def check_candidates(layouts, owned, meta: MetaConfig, sampler: SamplerConfig) -> None:
    from metaad_dist.episodes.schedule import cyclic_groups

    need = meta.n_support + meta.n_query
    for subset in cyclic_groups(range(len(layouts)), meta.normal_per_episode):
        for actor, units in enumerate(owned):
            have = sum(min(int(layouts[f].eligible[units[f]].sum()), sampler.buffer_rows) for f in subset)
            if have < need:
                names = [layouts[f].name for f in subset]
                raise ConfigError(
                    f"meta.n_support + meta.n_query = {need} but sampler actor {actor} holds {have} training rows "
                    f"of normal families {names} (sampler.buffer_rows={sampler.buffer_rows}, "
                    f"sampler.num_actors={sampler.num_actors}); raise sampler.buffer_rows or lower the others"
                )
