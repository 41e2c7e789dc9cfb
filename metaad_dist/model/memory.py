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
still rank by how extreme they are. The weights (network, kNN, isolation) are a buffer, so a
checkpoint carries the ones its run chose (train/fusion.py).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metaad_dist.model.isolation import TensorIsolationForest

COMPONENTS = ("network", "knn", "isolation")  # the order of evidences and fusion weights


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
        self, in_dim: int, rows: int, k: int, calibration_rows: int, isolation_trees: int = 0, isolation_samples: int = 256
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
        # Sorted validation-normal scores per component: network, knn[, isolation].
        components = 3 if self.forest is not None else 2
        self.register_buffer("reference", torch.zeros(components, calibration_rows))
        self.register_buffer("weights", torch.ones(len(COMPONENTS)))
        self.register_buffer("ready", torch.tensor(False))

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
        return scores

    @torch.no_grad()
    def fill(self, normal_x: torch.Tensor, val_normal_x: torch.Tensor, network_ref: torch.Tensor, seed: int) -> None:
        """Store the memory rows, grow the forest on them, and keep sorted validation-normal scores."""
        self.bank.copy_(normal_x)
        if self.forest is not None:
            self.forest.fit(normal_x.cpu().numpy().astype(np.float32), seed)
        refs = torch.stack([network_ref, *self.one_class_scores(val_normal_x)])
        self.reference.copy_(refs.sort(dim=1).values)
        self.ready.fill_(True)

    def evidence(self, score: torch.Tensor, component: int) -> torch.Tensor:
        return tail_evidence(self.reference[component], score)

    @torch.no_grad()
    def one_class_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """(components - 1, rows): kNN [, isolation] evidence of each row."""
        return torch.stack([self.evidence(s, i) for i, s in enumerate(self.one_class_scores(x), start=1)])

    @torch.no_grad()
    def fuse(self, network_score: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the network's and the one-class evidences."""
        evidence = torch.cat([self.evidence(network_score, 0)[None], self.one_class_evidence(x)])
        return (self.weights[: len(evidence), None] * evidence).sum(dim=0)

    def set_weights(self, weights) -> None:
        """Fusion weights (network, kNN, isolation); the isolation one is unused without a forest."""
        self.weights.copy_(torch.as_tensor(weights, dtype=self.weights.dtype))
