"""Class labels for the inner cross-entropy.

Several normal families: the family is the class. A single normal family: K k-means
pseudo-classes of its training rows, so the head has a non-trivial manifold to learn
(the literal one-class BCE collapses; docs/method.md section 5).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from sklearn.cluster import KMeans


class ClassLabeler:
    def __init__(self, num_normal_families: int, pseudo_classes: int, seed: int):
        self.num_normal_families = num_normal_families
        self.pseudo = num_normal_families == 1
        self.num_classes = pseudo_classes if self.pseudo else num_normal_families
        self.seed = seed
        self._kmeans: Optional[KMeans] = None

    def fit_transform(self, x: np.ndarray, family_index: np.ndarray) -> np.ndarray:
        if not self.pseudo:
            return family_index.astype(np.int64)
        self._kmeans = KMeans(n_clusters=self.num_classes, n_init=3, random_state=self.seed).fit(x)
        return self._kmeans.labels_.astype(np.int64)

    def predict(self, x: np.ndarray, family_index: np.ndarray) -> np.ndarray:
        """Labels of new rows: the family index, or the nearest fitted centroid.

        On the rows it was fitted on this returns exactly `fit_transform`'s labels (k-means
        ends with an assignment step to its final centroids), in any batch split, so the
        sampler actors can label streamed rows the way the in-memory sampler does.
        """
        if not self.pseudo:
            return np.asarray(family_index).astype(np.int64)
        if self._kmeans is None:
            raise RuntimeError("ClassLabeler.predict before fit_transform or from_state_dict")
        return self._kmeans.predict(x).astype(np.int64)

    def state_dict(self) -> dict:
        """Plain values and tensors (centroids) for actors and checkpoints."""
        state: dict = {"num_normal_families": self.num_normal_families, "num_classes": self.num_classes,
                       "seed": self.seed}
        if self._kmeans is not None:
            state["centroids"] = torch.from_numpy(self._kmeans.cluster_centers_.copy())
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> "ClassLabeler":
        labeler = cls(state["num_normal_families"], state["num_classes"], state["seed"])
        if "centroids" in state:
            centroids = state["centroids"].numpy()
            kmeans = KMeans(n_clusters=len(centroids), random_state=labeler.seed)
            kmeans.cluster_centers_ = centroids
            kmeans.n_features_in_ = centroids.shape[1]
            kmeans._n_threads = 1  # predict is one small product per batch; threads only oversubscribe
            labeler._kmeans = kmeans
        return labeler
