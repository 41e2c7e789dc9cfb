"""The method's own ablation: the inner loop alone (one-class MSP over normal classes).

Same encoder, episodes and inner objective, no outer calibration and no normal memory (the
network's own score): whatever the method gains over this comes from the anomaly shots and the
memory (the benchmark's memory-off ablation separates the two).
"""
from __future__ import annotations

import numpy as np
import torch


def fit_inner_only(cfg, setup):
    from metaad_dist.train.api import fit

    result = fit(cfg, setup=setup, outer=False)
    model = result.trained.model.eval()

    def score(x_scaled: np.ndarray) -> np.ndarray:
        return model.network_score(torch.as_tensor(x_scaled), cfg.model.score).numpy()

    return score
