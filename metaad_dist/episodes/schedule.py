"""The multidirectional schedule: which normal subset meets which meta families, episode by episode.

Rotation is a schedule, not only random draws: every meta group is paired with every normal
subset once per cycle, in an order shuffled once per seed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def cyclic_groups(items: Sequence, size: int) -> list[tuple]:
    """Windows of `size` consecutive items around a circle; all items at once when size is 0."""
    items = tuple(items)
    if size <= 0 or size >= len(items):
        return [items]
    return [tuple(items[(i + j) % len(items)] for j in range(size)) for i in range(len(items))]


def multidirectional_schedule(
    num_normal: int,
    meta_families: Sequence[str],
    normal_per_episode: int,
    meta_per_episode: int,
    seed: int,
) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    normal_subsets = cyclic_groups(range(num_normal), normal_per_episode)
    meta_groups = cyclic_groups(meta_families, meta_per_episode)
    pairs = [(n, m) for n in normal_subsets for m in meta_groups]
    order = np.random.default_rng([seed, 7]).permutation(len(pairs))
    return [pairs[i] for i in order]
