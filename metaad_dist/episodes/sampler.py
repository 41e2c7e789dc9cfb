"""Episodes from in-memory arrays: a pure function of (seed, episode index).

The Ray sampler actors build the same episodes from streamed Parquet row groups; this one is
the reference (and the ceiling in benchmarks/sampler.py).
"""
from __future__ import annotations

import numpy as np

from metaad_dist.config import MetaConfig, plain
from metaad_dist.episodes.episode import Episode
from metaad_dist.episodes.schedule import multidirectional_schedule
from metaad_dist.errors import ConfigError


def draw_shots(rng: np.random.Generator, budget_x: dict[str, np.ndarray], meta_group, k_shot: int):
    """k_shot rows of each family in `meta_group`, only from its budget pool; the draws every
    sampler makes in the same order, so the in-memory and actor samplers agree."""
    shot_rows, shots, shot_family = {}, [], []
    for j, family in enumerate(meta_group):
        pool = budget_x[family]
        rows = rng.choice(len(pool), min(k_shot, len(pool)), replace=False)
        shot_rows[family] = rows
        shots.append(pool[rows])
        shot_family.append(np.full(len(rows), j, dtype=np.int64))
    return shot_rows, np.concatenate(shots), np.concatenate(shot_family)


class EpisodeSampler:
    def __init__(
        self,
        normal_x: np.ndarray,
        normal_labels: np.ndarray,
        normal_family_index: np.ndarray,
        num_normal_families: int,
        budget_x: dict[str, np.ndarray],
        cfg: MetaConfig,
        seed: int,
    ):
        self.normal_x = normal_x
        self.normal_labels = normal_labels
        self.budget_x = budget_x
        self.cfg = cfg = plain(cfg)
        self.seed = seed
        self.schedule = multidirectional_schedule(
            num_normal_families, sorted(budget_x), cfg.normal_per_episode, cfg.meta_per_episode, seed
        )
        self._rows_by_subset: dict[tuple[int, ...], np.ndarray] = {}
        need = cfg.n_support + cfg.n_query
        for subset, _ in self.schedule:
            rows = np.flatnonzero(np.isin(normal_family_index, subset))
            if len(rows) < need:
                raise ConfigError(
                    f"meta.n_support + meta.n_query = {need} but normal families {list(subset)} "
                    f"have {len(rows)} training rows; lower them or raise meta.normal_per_episode"
                )
            self._rows_by_subset[subset] = rows

    def episode(self, index: int) -> Episode:
        normal_subset, meta_group = self.schedule[index % len(self.schedule)]
        rng = np.random.default_rng([self.seed, index])
        cfg = self.cfg
        candidates = self._rows_by_subset[normal_subset]
        drawn = candidates[rng.choice(len(candidates), cfg.n_support + cfg.n_query, replace=False)]
        support, query = drawn[: cfg.n_support], drawn[cfg.n_support:]
        shot_rows, shots_x, shots_family = draw_shots(rng, self.budget_x, meta_group, cfg.k_shot)
        return Episode(
            index=index,
            normal_families=normal_subset,
            meta_families=meta_group,
            support_rows=support,
            query_rows=query,
            shot_rows=shot_rows,
            support_x=self.normal_x[support],
            support_y=self.normal_labels[support],
            query_x=self.normal_x[query],
            query_y=self.normal_labels[query],
            shots_x=shots_x,
            shots_family=shots_family,
        )
