"""Split a dataset into what training may see and what only evaluation may see.

The training view is built from a read of the normal, meta and validation families alone, so
held-out rows are structurally unreachable from training code. Splits and budget pools are
pure functions of (seed, family, row ids): the training view and the test view computed in
different processes agree row for row.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from metaad_dist.config import DataConfig, MetaConfig
from metaad_dist.data.roles import FamilyRoles
from metaad_dist.data.source import DatasetSource
from metaad_dist.data.table import FamilyTable
from metaad_dist.errors import ConfigError


@dataclass
class TrainingView:
    """Everything training, tuning and normalisation code may touch."""

    feature_names: list[str]
    normal_families: list[str]
    normal_x: np.ndarray  # training normal rows
    normal_family_index: np.ndarray  # index into normal_families, per row
    val_normal_x: np.ndarray  # validation normal rows (model selection)
    budget_x: dict[str, np.ndarray]  # the fixed anomaly-shot pool per meta family
    budget_row_ids: dict[str, np.ndarray]
    validation_x: dict[str, np.ndarray] = field(default_factory=dict)  # validation families


@dataclass
class TestView:
    """Rows only evaluation may touch: test normals, held-out families, unseen meta rows."""

    normal_x: np.ndarray
    held_out_x: dict[str, np.ndarray]
    seen_meta_x: dict[str, np.ndarray]  # meta rows outside the budget pool (secondary metric)


def _family_rng(seed: int, purpose: int, family: str) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, zlib.crc32(family.encode())])


def _rows_of(table: FamilyTable, family: str, split: str | None) -> FamilyTable:
    mask = table.families == family
    if split is not None and table.split is not None:
        mask &= table.split == split
    sub = table.select(mask)
    return sub.select(np.argsort(sub.row_ids, kind="stable"))


def has_test_rows(table: FamilyTable, family: str) -> bool:
    """Whether `family` has rows of the source's official test file. Decided per family, so
    the training view, the test view and the sampler actors agree whatever families they read."""
    return table.split is not None and bool(((table.families == family) & (table.split == "test")).any())


def split_masks(n: int, family: str, data: DataConfig, seed: int, official_test: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) boolean masks over a normal family's `n` pool rows in row-id order.

    The pool is every row of the family, or its official train rows when the family has official
    test rows (has_test_rows; then no test share is carved out); the rest of the pool is test.
    Needs row counts only, so a reader that sees just the row-id column (the sampler actors, the
    streaming setup) splits exactly as the views do. The seeded permutation is held as int32
    (`shuffle` of an arange draws exactly as `permutation`): 4 bytes a row, freed on return.
    """
    order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    _family_rng(seed, 1, family).shuffle(order)
    n_val = int(round(data.val_fraction * n))
    n_test = 0 if official_test else int(round(data.test_fraction * n))
    train = np.ones(n, dtype=bool)
    train[order[:n_val + n_test]] = False
    val = np.zeros(n, dtype=bool)
    val[order[:n_val]] = True
    return train, val


def split_normal_positions(
    n: int, family: str, data: DataConfig, seed: int, official: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted (train, val, test) positions among a normal family's `n` pool rows (split_masks)."""
    train, val = split_masks(n, family, data, seed, official)
    return np.flatnonzero(train), np.flatnonzero(val), np.flatnonzero(~(train | val))


def budget_positions(n: int, family: str, budget: int, seed: int) -> np.ndarray:
    """Sorted positions of a meta family's budget pool among its `n` train rows in row-id order."""
    take = min(budget, n)
    return np.sort(_family_rng(seed, 2, family).choice(n, size=take, replace=False))


def _split_normal(table: FamilyTable, family: str, data: DataConfig, seed: int):
    """(train, val, test) rows of one normal family; official test rows stay test rows."""
    official = has_test_rows(table, family)
    pool = _rows_of(table, family, "train" if official else None)
    train_idx, val_idx, test_idx = split_normal_positions(len(pool), family, data, seed, official)
    test = _rows_of(table, family, "test") if official else pool.select(test_idx)
    return pool.select(train_idx), pool.select(val_idx), test


def _budget_pool(table: FamilyTable, family: str, budget: int, seed: int) -> FamilyTable:
    rows = _rows_of(table, family, "train")
    return rows.select(budget_positions(len(rows), family, budget, seed))


def validation_positions(n: int, family: str, cap: int, seed: int) -> np.ndarray:
    """Sorted positions of the (at most `cap`) rows of a validation family kept for model
    selection, among its `n` train rows in row-id order."""
    return np.sort(_family_rng(seed, 3, family).permutation(n)[:cap])


def check_meta_config(meta: MetaConfig) -> None:
    if meta.k_shot > meta.budget:
        raise ConfigError(
            f"meta.k_shot={meta.k_shot} is larger than meta.budget={meta.budget}; "
            "expected k_shot <= budget (shots are drawn from the budget pool)"
        )
    for key in ("k_shot", "budget", "n_support", "n_query", "episodes"):
        if getattr(meta, key) < 1:
            raise ConfigError(f"meta.{key}={getattr(meta, key)}; expected a positive integer")
    if meta.curriculum_families < 0:
        raise ConfigError(f"meta.curriculum_families={meta.curriculum_families}; expected an integer >= 0 (0 switches it off)")
    if meta.curriculum_families > 0 and meta.meta_per_episode != 0:
        raise ConfigError(
            f"meta.curriculum_families={meta.curriculum_families} with meta.meta_per_episode={meta.meta_per_episode}; "
            "expected meta.meta_per_episode=0 (the curriculum picks among every meta family in each episode)"
        )
    if meta.curriculum_temperature <= 0:
        raise ConfigError(f"meta.curriculum_temperature={meta.curriculum_temperature}; expected a number > 0")
    if not 0 <= meta.curriculum_momentum < 1:
        raise ConfigError(f"meta.curriculum_momentum={meta.curriculum_momentum}; expected a number in [0, 1)")


def build_training_view(
    source: DatasetSource, roles: FamilyRoles, data: DataConfig, meta: MetaConfig, seed: int
) -> TrainingView:
    check_meta_config(meta)
    table = source.read(roles.trainable)  # held-out families are never read
    train_parts, val_parts, index = [], [], []
    for i, family in enumerate(roles.normal):
        train, val, _ = _split_normal(table, family, data, seed)
        train_parts.append(train.features)
        val_parts.append(val.features)
        index.append(np.full(len(train), i, dtype=np.int64))
    budget = {f: _budget_pool(table, f, meta.budget, seed) for f in roles.meta}
    for family, pool in budget.items():
        if len(pool) == 0:
            raise ConfigError(f"data.meta: family '{family}' has no training rows to draw shots from")
    validation = {}
    for family in roles.validation:
        rows = _rows_of(table, family, "train" if table.split is not None else None)
        if len(rows) == 0:  # its AUROC would be NaN and a sweep would rank trials by nothing
            raise ConfigError(f"data.validation: family '{family}' has no training rows to validate on")
        validation[family] = rows.features[validation_positions(len(rows), family, data.max_validation_rows, seed)]
    normal_x = np.concatenate(train_parts)
    if len(normal_x) < meta.n_support + meta.n_query:
        raise ConfigError(
            f"meta.n_support + meta.n_query = {meta.n_support + meta.n_query} exceeds the "
            f"{len(normal_x)} training normal rows; lower them"
        )
    return TrainingView(
        feature_names=table.feature_names,
        normal_families=list(roles.normal),
        normal_x=normal_x,
        normal_family_index=np.concatenate(index),
        val_normal_x=np.concatenate(val_parts),
        budget_x={f: p.features for f, p in budget.items()},
        budget_row_ids={f: p.row_ids for f, p in budget.items()},
        validation_x=validation,
    )


def build_test_view(
    source: DatasetSource, roles: FamilyRoles, data: DataConfig, meta: MetaConfig, seed: int
) -> TestView:
    table = source.read(roles.normal + roles.meta + roles.held_out)
    normal = np.concatenate([_split_normal(table, f, data, seed)[2].features for f in roles.normal])
    held_out = {f: _rows_of(table, f, "test" if has_test_rows(table, f) else None).features for f in roles.held_out}
    seen = {}
    for family in roles.meta:
        pool_ids = _budget_pool(table, family, meta.budget, seed).row_ids
        rows = _rows_of(table, family, "test" if has_test_rows(table, family) else None)
        seen[family] = rows.features[~np.isin(rows.row_ids, pool_ids)]
    return TestView(normal_x=normal, held_out_x=held_out, seen_meta_x=seen)
