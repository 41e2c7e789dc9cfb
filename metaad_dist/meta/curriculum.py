"""Hard-OOD curriculum: the meta families the head currently separates worst get into more
outer updates (docs/method.md section 5, from the authors' draft).

Hardness is the confidence margin mean S(normal query) - mean S(family shots), averaged over
episodes with momentum; each outer update draws `families` of them without replacement with
probability softmax(-margin / temperature). Pure state plus a seeded draw: the choice for
episode e is a function of (seed, e, the margins), and the margins go into checkpoints.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class HardFamilyCurriculum:
    def __init__(self, families: int, temperature: float, momentum: float, seed: int):
        self.families = families
        self.temperature = temperature
        self.momentum = momentum
        self.seed = seed
        self.margins: dict[str, float] = {}

    def observe(self, margins: dict[str, float]) -> None:
        """Fold this episode's per-family margins into the moving averages."""
        for family, m in margins.items():
            old = self.margins.get(family)
            self.margins[family] = m if old is None else self.momentum * old + (1 - self.momentum) * m

    def probabilities(self, candidates: Sequence[str]) -> np.ndarray:
        m = np.array([self.margins.get(f, 0.0) for f in candidates], dtype=np.float64)
        m = np.nan_to_num(m, nan=0.0)  # a family whose margin could not be measured: neutral
        logits = -(m - m.min()) / self.temperature
        # A floor: at small temperatures exp() underflows to 0 for all but the hardest family,
        # and choosing `families` of them without replacement needs that many non-zero entries.
        p = np.maximum(np.exp(logits), 1e-12)
        return p / p.sum()

    def choose(self, candidates: Sequence[str], episode: int) -> list[str]:
        """The families whose shots enter this episode's outer update (all when few enough)."""
        if len(candidates) <= self.families:
            return list(candidates)
        rng = np.random.default_rng([self.seed, episode, 23])
        picked = rng.choice(len(candidates), self.families, replace=False, p=self.probabilities(candidates))
        return [candidates[i] for i in sorted(picked)]

    def state_dict(self) -> dict:
        return {"margins": dict(self.margins)}

    def load_state_dict(self, state: dict) -> None:
        self.margins = {str(k): float(v) for k, v in state["margins"].items()}
