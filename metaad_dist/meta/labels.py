"""Class labels for the inner cross-entropy.

Several normal families: the family is the class. A single normal family: K k-means
pseudo-classes of its training rows, so the head has a non-trivial manifold to learn
(the literal one-class BCE collapses; METHOD.md section 5).
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans


class ClassLabeler:
    def __init__(self, num_normal_families: int, pseudo_classes: int, seed: int):
        self.pseudo = num_normal_families == 1
        self.num_classes = pseudo_classes if self.pseudo else num_normal_families
        self.seed = seed
        self._kmeans = None

    def fit_transform(self, x: np.ndarray, family_index: np.ndarray) -> np.ndarray:
        if not self.pseudo:
            return family_index.astype(np.int64)
        self._kmeans = KMeans(n_clusters=self.num_classes, n_init=3, random_state=self.seed).fit(x)
        return self._kmeans.labels_.astype(np.int64)
