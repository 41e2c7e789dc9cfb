"""The local fit's fusion fold networks, trained in forked processes beside its episode loop.

A fold network (`fusion.fold_network`) needs nothing of the run's own network, so the local
trainer need not wait for its loop: `LocalFolds` forks `trainer.fold_processes - 1` children
before the loop; each takes the next untrained fold from a shared counter until none is left,
and this process joins them once its loop and memory fill are done (the same queue as Ray
Train's `fold_queue`, issue 19). Fork rather than spawn: a child shares the training setup's
arrays copy-on-write instead of re-reading the data and importing torch again (about 3 s a
process here). Only a fold's index goes in; its weights come back as numpy arrays. A fold is
seeded by its family, so which process trains it does not change its network.

CPU only: a process that has initialised CUDA cannot fork, and folds sharing one GPU would
gain little. Inside a Ray worker (a process full of Ray's threads) the folds stay serial.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from metaad_dist.config import Config
from metaad_dist.errors import ConfigError
from metaad_dist.model.networks import MetaADModel
from metaad_dist.train.fusion import FitNetwork, fold_model_args, fold_network
from metaad_dist.train.setup import TrainingSetup

POLL_SECONDS = 0.2  # how often the gathering parent looks for a child that died without reporting
ORPHAN_POLL_SECONDS = 1.0  # how often a child looks whether its parent is still there


def fold_process_count(setting: int, folds: int, device: torch.device) -> int:
    """Processes for `folds` fold networks beside the loop (this one included), from
    trainer.fold_processes (0: one per core this process may use, at most folds + 1)."""
    if setting < 0:
        raise ConfigError(f"trainer.fold_processes={setting}; expected 0 (one per core) or a positive count")
    if folds == 0 or device.type != "cpu" or "fork" not in multiprocessing.get_all_start_methods() or in_ray_worker():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(setting or cores, folds + 1)


def in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


class LocalFolds:
    """`with LocalFolds(...) as folds:` run the loop, then `folds.networks()` (in `families`
    order). Leaving the block stops any child still running (e.g. the loop failed)."""

    def __init__(self, cfg: Config, setup: TrainingSetup, families: Sequence[str], fit: FitNetwork, processes: int,
                 log: Callable[[str], None] = print):
        self.cfg, self.setup, self.families, self.fit, self.log = cfg, setup, list(families), fit, log
        self.processes = processes
        self.children: list = []
        self.trained_by: dict[str, int] = {}  # fold -> process index (0: this one)
        self.seconds_by_process = [0.0] * processes

    def __enter__(self) -> "LocalFolds":
        if self.processes > 1:
            self.parent = os.getpid()
            ctx = multiprocessing.get_context("fork")
            self.counter = ctx.Value("i", 0)
            # A queue, not a pipe: its feeder thread buffers a fold's weights (larger than a pipe
            # holds) so the child goes on to its next fold while this process is still looping.
            self.results = ctx.Queue()
            for process in range(1, self.processes):
                child = ctx.Process(target=self._child, args=(process,), daemon=True, name=f"metaad-fold-{process}")
                child.start()
                self.children.append(child)
        return self

    def __exit__(self, *exc) -> None:
        for child in self.children:
            if child.is_alive():
                child.terminate()
            child.join()
        if self.children:
            self.results.close()

    def _claim(self) -> Optional[int]:
        """The next untrained fold's index, or None: each index goes to exactly one process."""
        if self.processes == 1:
            index = len(self.trained_by)
        else:
            with self.counter.get_lock():
                index = self.counter.value
                self.counter.value += 1
        return index if index < len(self.families) else None

    def _train(self, index: int) -> MetaADModel:
        return fold_network(self.cfg, self.setup, self.families[index], self.fit)

    def _child(self, process: int) -> None:
        """A forked child: train folds until none is left, send each one's weights. Ends with
        os._exit so that nothing of the parent's (atexit hooks, buffered output) runs twice."""
        code = 0
        threading.Thread(target=self._end_with_parent, daemon=True).start()
        try:
            while (index := self._claim()) is not None:
                started = time.perf_counter()
                weights = {k: v.detach().cpu().numpy() for k, v in self._train(index).state_dict().items()}
                self.results.put(("fold", process, index, weights, time.perf_counter() - started))
            self.results.put(("done", process))
        except BaseException:  # noqa: BLE001 -- reported to the parent, which raises it
            self.results.put(("error", process, traceback.format_exc().strip().splitlines()[-1]))
            code = 1
        finally:
            self.results.close()
            self.results.join_thread()  # everything sent is in the pipe before the process ends
            os._exit(code)

    def _end_with_parent(self) -> None:
        """A parent killed without a word (SIGKILL, out of memory) runs no cleanup: without this
        its children would train on, or block for ever sending weights nobody reads."""
        while os.getppid() == self.parent:
            time.sleep(ORPHAN_POLL_SECONDS)
        os._exit(1)

    def networks(self) -> dict[str, MetaADModel]:
        """Train in this process every fold no child has taken, then gather the children's. A
        child that died without reporting (killed, out of memory) leaves its folds to this one."""
        networks: dict[str, MetaADModel] = {}
        while (index := self._claim()) is not None:
            networks[self.families[index]] = self._timed(index)
        networks.update(self._gather())
        for family in self.families:
            if family not in networks:
                self.log(f"[fusion] a fold process ended without fold '{family}'; training it here")
                networks[family] = self._timed(self.families.index(family))
        return {f: networks[f] for f in self.families}

    def _timed(self, index: int) -> MetaADModel:
        started = time.perf_counter()
        network = self._train(index)
        self.seconds_by_process[0] += time.perf_counter() - started
        self.trained_by[self.families[index]] = 0
        return network

    def _gather(self) -> dict[str, MetaADModel]:
        networks: dict[str, MetaADModel] = {}
        running = set(range(1, self.processes))
        while running:
            try:
                message = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                # A child flushes its queue before it ends, so a dead child's messages are all
                # read by the time the queue runs empty: it has nothing more to send.
                running = {p for p in running if self.children[p - 1].is_alive()}
                continue
            kind, process = message[:2]
            if kind == "error":
                raise RuntimeError(f"a fusion fold process failed: {message[2]}")
            if kind == "done":
                running.discard(process)
                continue
            _, _, index, weights, seconds = message
            family = self.families[index]
            networks[family] = self._load(weights)
            self.trained_by[family] = process
            self.seconds_by_process[process] += seconds
        return networks

    def _load(self, weights: dict[str, np.ndarray]) -> MetaADModel:
        network = MetaADModel(**fold_model_args(self.setup))
        network.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        return network.eval()

    def report(self) -> dict:
        """For metrics.json: like Ray Train's `fusion` entry, the folds each process trained."""
        return {
            "fold_processes": self.processes,
            "folds_by_process": [[f for f in self.families if self.trained_by.get(f) == p] for p in range(self.processes)],
            "fold_seconds_by_process": [round(s, 3) for s in self.seconds_by_process],
        }
