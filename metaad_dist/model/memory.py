"""Normal memory: one-class evidence (kNN distance, isolation depth) fused with the network score.

Why: the encoder is shaped on normal rows by a pseudo-class / reconstruction objective and may
drop directions along which an unseen family differs from normal, and the outer loop fits the
seen families; two classic one-class scores on the scaled input rows cannot do either: the
distance to the nearest training normal rows (Ramaswamy et al., "Efficient algorithms for
mining outliers from large data sets", SIGMOD 2000; Bergman et al., "Deep nearest neighbor
anomaly detection", arXiv 2002.10445) and the isolation depth (Liu et al., ICDM 2008, see
isolation.py). The network brings what the anomaly shots taught the outer loop; the memory
brings what no shot could.

Fusion: each component score s is turned into evidence t(s) = -log(1 - F(s)), with F the
empirical distribution of that component on validation normal rows (how surprising s would be
for a normal row), and the evidences add up with weights (Fisher's combination of p-values, up
to a constant factor, when the weights are equal). Above the largest reference value the
evidence keeps growing linearly in units of the reference inter-quartile range, so extreme rows
still rank by how extreme they are. The weights (network, kNN, isolation, reconstruction) are
a buffer, so a checkpoint carries the ones its run chose (train/fusion.py); a part the memory
does not have (no forest, no reconstruction model) gives no evidence, whatever its weight.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from metaad_dist.model.reconstruction import build_reconstruction
from metaad_dist.model.isolation import TensorIsolationForest

COMPONENTS = ("network", "knn", "isolation", "reconstruction")  # the order of evidences and fusion weights


def tail_evidence(reference: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """-log(1 - F(score)) for F the empirical distribution of the sorted `reference`, plus a
    linear tail in reference-IQR units beyond its largest value."""
    n = reference.numel()
    rank = torch.searchsorted(reference, score.contiguous(), right=True).to(score.dtype)
    t = -torch.log1p(-rank / (n + 1))
    iqr = (reference[(3 * n) // 4] - reference[n // 4]).clamp_min(1e-12)
    return t + (score - reference[-1]).clamp_min(0) / iqr


class NormalMemory(nn.Module):
    def __init__(
        self,
        in_dim: int,
        rows: int,
        k: int,
        calibration_rows: int,
        isolation_trees: int = 0,
        isolation_samples: int = 256,
        autoencoder_hidden: Sequence[int] = (),
        autoencoder_fit: Sequence[float] = (150, 1e-3, 128),
        reconstruction: str = "autoencoder",  # what checkpoints written before the choice existed used
        pca_components: int = 32,
    ):
        super().__init__()
        if rows < k:
            raise ValueError(f"normal memory of {rows} rows cannot give {k} nearest neighbours")
        self.k = k
        self.register_buffer("bank", torch.zeros(rows, in_dim))
        self.forest = (
            TensorIsolationForest(*TensorIsolationForest.shape_for(isolation_trees, min(isolation_samples, rows)))
            if isolation_trees > 0 else None
        )
        self.reconstruction = build_reconstruction(reconstruction, in_dim, pca_components, autoencoder_hidden, autoencoder_fit)
        # Indices into COMPONENTS of the parts this memory has, in evidence order.
        self.parts = [0, 1] + ([2] if self.forest is not None else []) + ([3] if self.reconstruction is not None else [])
        # Sorted validation-normal scores per part: network, knn[, isolation][, reconstruction].
        self.register_buffer("reference", torch.zeros(len(self.parts), calibration_rows))
        self.register_buffer("weights", torch.ones(len(COMPONENTS)))
        self.register_buffer("ready", torch.tensor(False))
        # train/fusion.FusionChoice of the run that chose the weights, for its reports; not in
        # checkpoints (a loaded model has the weights, not how they were chosen).
        self.choice = None
        self._calibration = None  # (validation normal rows, their one-class evidence) from fill
        self.fill_seconds: dict[str, float] = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._calibration = None  # other references: the evidence from fill no longer holds
        # Checkpoints written before the reconstruction part carry three weights: its weight is 0.
        key = prefix + "weights"
        if key in state_dict and state_dict[key].numel() < len(COMPONENTS):
            old = state_dict[key]
            state_dict[key] = torch.cat([old, old.new_zeros(len(COMPONENTS) - old.numel())])
        # ... and called their reconstruction model `autoencoder`.
        for old in [k for k in state_dict if k.startswith(prefix + "autoencoder.")]:
            state_dict[prefix + "reconstruction." + old[len(prefix + "autoencoder."):]] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def knn_distance(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Mean Euclidean distance to the k nearest memory rows (chunked: bounded memory)."""
        out = []
        for i in range(0, len(x), chunk):
            d = torch.cdist(x[i:i + chunk], self.bank)
            out.append(d.topk(self.k, dim=1, largest=False).values.mean(dim=1))
        return torch.cat(out) if out else x.new_zeros(0)

    @torch.no_grad()
    def one_class_scores(self, x: torch.Tensor) -> list[torch.Tensor]:
        scores = [self.knn_distance(x)]
        if self.forest is not None:
            scores.append(self.forest.anomaly_score(x))
        if self.reconstruction is not None:
            scores.append(self.reconstruction.reconstruction_error(x))
        return scores

    @torch.no_grad()
    def fill(self, normal_x: torch.Tensor, val_normal_x: torch.Tensor, network_ref: torch.Tensor, seed: int) -> None:
        """Store the memory rows, grow the forest and fit the reconstruction model on them, keep sorted
        validation-normal scores (and, for the fusion choice, those rows' one-class evidence,
        which would otherwise cost a second kNN pass over them)."""
        started = time.perf_counter()
        self.bank.copy_(normal_x)
        if self.forest is not None:
            self.forest.fit(normal_x.cpu().numpy().astype(np.float32), seed)
        grown = time.perf_counter()
        if self.reconstruction is not None:
            self.reconstruction.fit(normal_x, seed)
        fitted = time.perf_counter()
        scores = self.one_class_scores(val_normal_x)
        refs = torch.stack([network_ref, *scores])
        self.reference.copy_(refs.sort(dim=1).values)
        self.ready.fill_(True)
        self._calibration = (val_normal_x, self._one_class_evidence(val_normal_x, scores))
        # Where a fill's time goes (benchmarks/trainer.py fit_phases_s); not in checkpoints.
        self.fill_seconds = {"forest": grown - started, "reconstruction": fitted - grown,
                             "calibration": time.perf_counter() - fitted}

    def evidence(self, score: torch.Tensor, row: int) -> torch.Tensor:
        """Evidence of `score` against reference row `row` (the part self.parts[row])."""
        return tail_evidence(self.reference[row], score)

    @torch.no_grad()
    def one_class_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """(len(COMPONENTS) - 1, rows): kNN, isolation and reconstruction evidence of each row,
        zero for a part this memory does not have. The calibration rows' comes from `fill`."""
        rows, evidence = self._calibration or (None, None)
        if rows is not None and rows.shape == x.shape and rows.device == x.device and torch.equal(rows, x):
            return evidence.clone()
        return self._one_class_evidence(x, self.one_class_scores(x))

    def _one_class_evidence(self, x: torch.Tensor, scores: list[torch.Tensor]) -> torch.Tensor:
        out = x.new_zeros(len(COMPONENTS) - 1, len(x))
        for part, score in zip(self.parts[1:], scores):
            out[part - 1] = self.evidence(score, self.parts.index(part))
        return out

    @torch.no_grad()
    def fuse(self, network_score: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the network's and the one-class evidences."""
        evidence = torch.cat([self.evidence(network_score, 0)[None], self.one_class_evidence(x)])
        return self.weights @ evidence

    def set_weights(self, weights) -> None:
        """Fusion weights (network, kNN, isolation[, reconstruction]); a missing last one is 0."""
        weights = list(weights) + [0.0] * (len(COMPONENTS) - len(weights))
        self.weights.copy_(torch.as_tensor(weights, dtype=self.weights.dtype))
