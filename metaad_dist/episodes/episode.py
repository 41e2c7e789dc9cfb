"""One episode of the multidirectional schedule (docs/method.md section 4)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Episode:
    index: int
    normal_families: tuple[int, ...]  # N_e, indices into the normal families
    meta_families: tuple[str, ...]  # M_e
    support_rows: np.ndarray  # row indices into the training normal rows (inner loop)
    query_rows: np.ndarray  # disjoint from support_rows (outer loop)
    shot_rows: dict[str, np.ndarray]  # indices into each meta family's budget pool
    support_x: np.ndarray
    support_y: np.ndarray  # class or pseudo-class labels for the inner cross-entropy
    query_x: np.ndarray
    query_y: np.ndarray
    shots_x: np.ndarray  # k_shot rows of each family in M_e, stacked
    shots_family: np.ndarray  # index into meta_families, per shot row
