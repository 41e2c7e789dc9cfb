"""Normal memory: a k-nearest-neighbour density term fused with the meta-learned score.

Why: the encoder is shaped on normal rows by a pseudo-class / reconstruction objective and may
drop directions along which an unseen family differs from normal; the distance to the nearest
training normal rows in the scaled input space cannot (Ramaswamy et al., "Efficient algorithms
for mining outliers from large data sets", SIGMOD 2000; Bergman et al., "Deep nearest neighbor
anomaly detection", arXiv 2002.10445). The network brings what the anomaly shots taught the
outer loop; the memory brings what no shot could.

Fusion without anomaly labels: each component score s is turned into evidence
t(s) = -log(1 - F(s)), with F the empirical distribution of that component on validation
normal rows (how surprising s would be for a normal row), and the evidences add up (Fisher's
combination of p-values, up to a constant factor). Above the largest reference value the
evidence keeps growing linearly in units of the reference inter-quartile range, so extreme rows
still rank by how extreme they are.
"""
from __future__ import annotations

import torch
from torch import nn


class NormalMemory(nn.Module):
    def __init__(self, in_dim: int, rows: int, k: int, calibration_rows: int, components: int = 2):
        super().__init__()
        if rows < k:
            raise ValueError(f"normal memory of {rows} rows cannot give {k} nearest neighbours")
        self.k = k
        self.register_buffer("bank", torch.zeros(rows, in_dim))
        # Sorted validation-normal scores per component: [network, knn].
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
    def fill(self, normal_x: torch.Tensor, network_ref: torch.Tensor, knn_ref: torch.Tensor) -> None:
        """Store the memory rows and the sorted reference scores of validation normal rows."""
        self.bank.copy_(normal_x)
        refs = torch.stack([network_ref, knn_ref])
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
    def fuse(self, network_score: torch.Tensor, x: torch.Tensor, knn_weight: float) -> torch.Tensor:
        knn = self.knn_distance(x)
        return self.evidence(network_score, 0) + knn_weight * self.evidence(knn, 1)
