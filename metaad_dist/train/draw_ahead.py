"""A worker's episodes for the next step, drawn while this step's gradient collective waits.

The in-memory sampler is CPU work in the worker process. Drawn on a thread beside the step's
kernels it slowed them (benchmarks/README.md, trainer.py section), but while a worker waits
at the gradient collective for the other workers, its core is idle: `GradientAverager`'s
`while_waiting` hook draws the next step's episodes there. Episodes are a pure function of
(seed, index), so when they are drawn does not change the run.
"""
from __future__ import annotations

import time
from typing import Callable

from metaad_dist.episodes.episode import Episode
from metaad_dist.train.collectives import GradientAverager


class DrawAhead:
    def __init__(self, draw: Callable[[int], list[Episode]], averager: GradientAverager):
        self.draw, self.averager = draw, averager
        self.ahead: dict[int, list[Episode]] = {}
        self.hidden_seconds = 0.0  # drawing inside a collective's wait

    def episodes(self, step: int, steps: int) -> list[Episode]:
        """Step `step`'s episodes (drawn now unless a collective drew them), and the next step's
        draw queued for this step's collective. A hook the step does not use (no gradient
        collective in it) is replaced by the next call's."""
        episodes = self.ahead.pop(step, None)
        if episodes is None:
            episodes = self.draw(step)
        self.averager.while_waiting = (lambda: self._ahead(step + 1)) if step + 1 < steps else None
        return episodes

    def _ahead(self, step: int) -> None:
        started = time.perf_counter()
        self.ahead[step] = self.draw(step)
        self.hidden_seconds += time.perf_counter() - started
