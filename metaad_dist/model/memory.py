"""Normal memory: one-class evidence (kNN distance, isolation depth) fused with the network score.

Why: the encoder is shaped on normal rows by a pseudo-class / reconstruction objective and may
drop directions along which an unseen family differs from normal, and the outer loop fits the
seen families; two classic one-class scores on the scaled input rows cannot do either: the
distance to the nearest training normal rows (Ramaswamy et al., "Efficient algorithms for
mining outliers from large data sets", SIGMOD 2000; Bergman et al., "Deep nearest neighbor
anomaly detection", arXiv 2002.10445) and the isolation depth (Liu et al., ICDM 2008, see
isolation.py). The network brings what the anomaly shots taught the outer loop; the memory
brings what no shot could.

Fusion without anomaly labels: each component score s is turned into evidence
t(s) = -log(1 - F(s)), with F the empirical distribution of that component on validation
normal rows (how surprising s would be for a normal row), and the evidences add up (Fisher's
combination of p-values, up to a constant factor). Above the largest reference value the
evidence keeps growing linearly in units of the reference inter-quartile range, so extreme rows
still rank by how extreme they are.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metaad_dist.model.isolation import TensorIsolationForest


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
        ref = self.reference[component]
        n = ref.numel()
        rank = torch.searchsorted(ref, score.contiguous(), right=True).to(score.dtype)
        t = -torch.log1p(-rank / (n + 1))
        iqr = (ref[(3 * n) // 4] - ref[n // 4]).clamp_min(1e-12)
        beyond = (score - ref[-1]).clamp_min(0) / iqr
        return t + beyond

    @torch.no_grad()
    def fuse(self, network_score: torch.Tensor, x: torch.Tensor, weight: float) -> torch.Tensor:
        """Network evidence + weight x each one-class evidence."""
        fused = self.evidence(network_score, 0)
        for i, score in enumerate(self.one_class_scores(x), start=1):
            fused = fused + weight * self.evidence(score, i)
        return fused
