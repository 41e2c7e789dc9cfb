"""Trainer throughput (docs/method.md section 8): the plain loop vs Ray Train with 1 and 2 workers.

Side by side in one run, per dataset (digits, and UNSW-NB15 prepared, with the quality
benchmark's settings: model=mlp, quantile scaler, 10 shots, leave-one-family-out with Shellcode
held out and no validation family, seed 0), every variant at the same
``meta.episodes_per_step`` E (--episodes-per-step):
  - local: `fit_network`, the single-process episode loop of `train_local` (no Ray, no checkpoints);
  - ray1 / ray2: `train_ray` with 1 and 2 gloo CPU workers (each E episodes per step, so ray2
    averages 2E per step), checkpoints every --checkpoint-every episodes into a local folder,
    reports every --log-every episodes.
Episodes/s is measured over the training loop (validation, reports and checkpoints included;
data preparation and Ray's worker start-up excluded, reported separately as wall time). The
throughput rows run without the normal memory (model.memory_rows=0): it is filled after the
loop, which these rows do not time.

  ray1_overhead         = local episodes/s / ray1 episodes/s - 1  (extra time per episode)
  ray2_speedup          = ray2 episodes/s / local episodes/s  (digits; _unsw: UNSW-NB15)
  two_process_ceiling   = summed episodes/s of two plain loops run at once / local episodes/s:
                          what two processes get from this machine at all (local_x2 row)
  lockstep_speedup      = episodes/s of two plain processes training one model in lockstep over
                          torch.distributed (the workers' learner, averager, collective and episode
                          split, no Ray: lockstep2 row; the loop alone, no validation) / local:
                          what synchronous steps get here, so that ray2_of_lockstep is Ray's share
  ray2_auroc_delta      = held-out AUROC of the ray2 network minus that of local_same_updates
                          (network score, no memory: what the loop trained), per dataset.
                          local_same_updates is the plain loop at 2E episodes per step: the
                          same optimizer updates as ray2 (2 workers x E), which local at E is not
                          (it takes twice as many steps over the same episodes)
  ray2_speedup_sequential = ray2_speedup with meta.update_order=sequential (two collectives per
                          step, the default before session 16): local_sequential and
                          ray2_sequential rows, so the new default's gain is measured side by side
  ray2_speedup_ray_niceness = ray2_speedup with the workers at Ray's default niceness 15
                          (trainer.worker_niceness=-1; the product's default is 0)
  ray2_speedup_gloo     = ray2_speedup with the gradients summed by gloo's all_gather
                          (trainer.grad_collective=all_gather, the default before session 20;
                          ray2 and lockstep2 use the default auto: shared memory on one machine)
  ray2_speedup_same_updates = ray2 episodes/s / local_same_updates episodes/s (the plain loop
                          batching all 2E episodes in one process, so a bigger batch per forward)
  sampler_wait_fraction = share of the Ray workers' loop time spent waiting for the next
                          episode (the larger of ray1 and ray2)
  fit_phases_s          = one full local fit on UNSW-NB15 (memory on, default fusion): seconds
                          of the loop, the fusion folds, the memory fill (forest, reconstruction)
                          and its calibration, with the folds after the loop in one process;
                          `local_fit_s`, the same fit with the folds in forked processes beside
                          the loop (trainer.fold_processes, the default); beside them the
                          after-the-loop seconds of a ray2 run, whose folds train on both
                          workers while rank 0 fills the memory. `--phases-only` re-measures
                          these alone into an existing report

Each variant runs --repeats times, interleaved; the best loop rate counts (the medians are
reported beside it). Load from other processes on the machine is recorded with the results.

    .venv/bin/python benchmarks/trainer.py [--datasets digits unsw_nb15] [--episodes-per-step 1]
        [--repeats 3] [--set KEY=VALUE ...]

Prints a table and writes benchmarks/results/trainer.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("METAAD_DATASETS", str(REPO.parent / "shared" / "datasets"))

from benchmarks.quality import cell_overrides, ensure_prepared  # noqa: E402
from metaad_dist.cli import compose_config  # noqa: E402
from metaad_dist.data.source import open_source  # noqa: E402
from metaad_dist.data.views import build_test_view  # noqa: E402
from metaad_dist.eval.metrics import detection_metrics  # noqa: E402
from metaad_dist.train.artifacts import load_run  # noqa: E402
from metaad_dist.train.commands import run_location  # noqa: E402
from metaad_dist.train.fusion import choose_fusion, fold_network, fold_plan  # noqa: E402
from metaad_dist.train.local import fit_network, fit_network_only, train_local  # noqa: E402
from metaad_dist.train.ray_trainer import train_ray  # noqa: E402
from metaad_dist.train.setup import configure_torch, prepare_training  # noqa: E402

DATASETS = ("digits", "unsw_nb15")
EPISODES = {"digits": 2000, "unsw_nb15": 600}  # unsw_nb15: the quality benchmark's meta.episodes
UNSW_HELD_OUT = "Shellcode"  # a low-duplicate family (docs/method.md section 7), as configs/data/unsw_nb15.yaml


def dataset_overrides(args, dataset: str) -> list[str]:
    """digits: its config's roles; UNSW-NB15: one cell of the quality benchmark."""
    if dataset == "digits":
        return ["data=digits"]
    cfg = compose_config([f"data={dataset}", f"data.path={args.data_root}/{dataset}"])
    families = [str(f) for f in open_source(cfg.data, cfg.storage).family_names()]
    others = [f for f in families if f not in ("Normal", UNSW_HELD_OUT)]
    quality = argparse.Namespace(data_root=args.data_root, scaler="quantile", quick=False, device=None, set=[])
    return ["model=mlp", *cell_overrides(quality, dataset, UNSW_HELD_OUT, others, 0, 10)]


def overrides(args, dataset: str, root: str) -> list[str]:
    return [
        *dataset_overrides(args, dataset),
        f"meta.episodes={args.episodes or EPISODES[dataset]}",
        f"meta.episodes_per_step={args.episodes_per_step}",
        f"trainer.log_every={args.log_every}",
        f"trainer.validate_every={args.validate_every}",
        f"trainer.checkpoint_every={args.checkpoint_every}",
        "trainer.keep_checkpoints=2",
        "trainer.torch_threads=1",
        "trainer.device=cpu",
        f"storage.root={root}",
        "quiet=true",
        *args.set,
    ]


THROUGHPUT = ["model.memory_rows=0"]  # the memory is filled after the loop: not what these rows time


@torch.no_grad()
def held_out_auroc(cfg, setup, model) -> float:
    """AUROC of the network score (no memory) on test normals vs the held-out families' test rows."""
    test = build_test_view(open_source(cfg.data, cfg.storage), setup.roles, cfg.data, cfg.meta, cfg.seed)
    score = lambda x: model.network_score(torch.as_tensor(setup.scaler.transform(x)), cfg.model.score).numpy()  # noqa: E731
    return detection_metrics(score(test.normal_x), np.concatenate([score(x) for x in test.held_out_x.values()]))["auroc"]


def timed_loop(cfg, setup):
    """Seconds of the episode loop alone (fit_network), which is what the Ray rows' loop_seconds
    cover: the normal memory and the fusion choice (finish_training) come after the loop in both
    and are left out of both."""
    started = time.perf_counter()
    model, history = fit_network(cfg, setup, log=lambda _: None)
    return time.perf_counter() - started, history, model


def run_local(base: list[str], auroc: bool) -> dict:
    cfg = compose_config(base)
    setup = prepare_training(cfg)
    configure_torch(cfg.trainer)
    # Warm-up: torch's first steps, and scikit-learn's k-means (in prepare_training) leaves OpenMP
    # threads spinning for a few seconds, which a Ray worker (OMP_NUM_THREADS=1) never has.
    timed_loop(compose_config([*base, "meta.episodes=200", "trainer.validate_every=1000"]), setup)
    time.sleep(2.0)
    started = time.perf_counter()
    # The sampler alone over the same episodes: the local loop's share spent drawing them.
    for e in range(cfg.meta.episodes):
        setup.sampler.episode(e)
    sampler_s = time.perf_counter() - started
    cpu = time.process_time()
    seconds, history, model = timed_loop(cfg, setup)
    cpu = time.process_time() - cpu
    episodes = history[-1]["episode"]
    return {
        "episodes_per_s": episodes / seconds,
        "cpu_ms_per_episode": 1000 * cpu / episodes,
        "loop_seconds": seconds,
        "sampler_wait_fraction": sampler_s / seconds,
        "val_auroc": history[-1].get("val_auroc"),
        "held_out_auroc": held_out_auroc(cfg, setup, model) if auroc else None,
    }


def _independent_loop(base: list[str], rank: int, port: int, barrier, results) -> None:
    """One of two plain loops run side by side (in its own process, one torch thread)."""
    cfg = compose_config(base)
    setup = prepare_training(cfg)
    configure_torch(cfg.trainer)
    timed_loop(compose_config([*base, "meta.episodes=200", "trainer.validate_every=1000"]), setup)
    barrier.wait()
    seconds, history, _ = timed_loop(cfg, setup)
    results.put((rank, {"episodes_per_s": history[-1]["episode"] / seconds}))


def _lockstep_loop(base: list[str], rank: int, port: int, barrier, results) -> None:
    """Rank `rank` of two plain processes training one model over torch.distributed (a gloo group
    on 127.0.0.1, gradients summed as trainer.grad_collective says), exactly as two Ray Train
    workers do (the same MetaLearner, GradientAverager and step_episodes), without Ray: no
    controller, raylet or reports beside them."""
    import torch.distributed as dist

    from metaad_dist.meta.learner import MetaLearner, step_episodes
    from metaad_dist.train.collectives import gradient_averager
    from metaad_dist.train.draw_ahead import DrawAhead

    cfg = compose_config(base)
    setup = prepare_training(cfg)
    device = configure_torch(cfg.trainer)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    learner = MetaLearner(setup.build_model(cfg.seed), cfg.meta, device, seed=cfg.seed)
    averager = gradient_averager(cfg.trainer.grad_collective, "gloo", learner.inner_params + learner.outer_params, 2)
    learner.grad_sync = averager
    per_step = 2 * cfg.meta.episodes_per_step

    def train(steps: int) -> None:
        # as the Ray worker: the next step's episodes are drawn during this step's collective
        ahead = DrawAhead(lambda s: [setup.sampler.episode(i) for i in step_episodes(s, cfg.meta.episodes_per_step, 2, rank)],
                          averager)
        for s in range(steps):
            learner.step_tensors(ahead.episodes(s, steps))

    train(math.ceil(200 / per_step))  # warm-up, as the plain loop's 200 episodes
    barrier.wait()
    dist.barrier()
    steps = math.ceil(cfg.meta.episodes / per_step)
    started, synced = time.perf_counter(), averager.seconds
    train(steps)
    seconds = time.perf_counter() - started
    results.put((rank, {"episodes_per_s": steps * per_step / seconds, "grad_collective": averager.collective,
                        "allreduce_fraction": (averager.seconds - synced) / seconds}))
    dist.destroy_process_group()


def run_pair(target, base: list[str]) -> list[dict]:
    """`target`'s results from two spawned processes (ranks 0 and 1) started together."""
    import multiprocessing as mp
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=target, args=(base, rank, port, barrier, results)) for rank in range(2)]
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # as in a Ray worker with one CPU; children inherit it
    try:
        for p in procs:
            p.start()
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    out = dict(results.get(timeout=3600) for _ in procs)
    for p in procs:
        p.join()
    return [out[rank] for rank in range(2)]


def run_two_independent(base: list[str]) -> dict:
    """The ceiling for 2 workers on this machine: two plain loops at once, no communication.

    Their summed episodes/s is what two cores give two independent processes here; a 2-worker
    run can at best match it (its steps also wait for each other twice per step)."""
    rates = [r["episodes_per_s"] for r in run_pair(_independent_loop, base)]
    return {"episodes_per_s": sum(rates), "per_process": rates}


def run_lockstep(base: list[str]) -> dict:
    """Two plain processes in lockstep (`_lockstep_loop`): what synchronous data
    parallelism itself gets from this machine, Ray's share of the gap to local_x2 taken out."""
    ranks = run_pair(_lockstep_loop, base)
    return {"episodes_per_s": ranks[0]["episodes_per_s"], "grad_collective": ranks[0]["grad_collective"],
            "allreduce_fraction": statistics.mean(r["allreduce_fraction"] for r in ranks)}


def run_ray(base: list[str], workers: int, name: str, auroc: bool = False) -> dict:
    cfg = compose_config([*base, "trainer=ray", f"trainer.num_workers={workers}", f"run={name}"])
    started = time.perf_counter()
    metrics = train_ray(cfg).metrics
    wall = time.perf_counter() - started
    t = metrics["trainer"]
    held_out = None
    if auroc:
        trained, _ = load_run(run_location(cfg))
        held_out = held_out_auroc(cfg, prepare_training(cfg), trained.model.eval())
    return {
        "episodes_per_s": t["loop_episodes_per_s"],
        "loop_seconds": t["loop_seconds"],
        "sampler_wait_fraction": t["sampler_wait_fraction"],
        "cpu_ms_per_episode": t["cpu_ms_per_episode"],
        "allreduce_fraction": t["allreduce_fraction"],
        "grad_collective": t["grad_collective"],  # trainer.grad_collective as the workers resolved it
        "drawn_ahead_fraction": t["drawn_ahead_fraction"],  # episodes drawn inside the collective's wait
        "report_fraction": t["report_fraction"],
        "wall_seconds": wall,
        "val_auroc": metrics["final"].get("val_auroc"),
        "held_out_auroc": held_out,
        "after_loop_seconds": t["fusion"]["seconds"],
        "fusion": t["fusion"],
    }


def fit_phases(base: list[str]) -> dict:
    """One full local fit (memory on), phase by phase with the folds after the loop in this
    process (trainer.fold_processes=1, the serial reference), then the same fit as `train_local`
    runs it by default: the folds in forked processes beside the loop (`local_fit_s`)."""
    cfg = compose_config([*base, "trainer.fold_processes=1"])
    started = time.perf_counter()
    setup = prepare_training(cfg)
    configure_torch(cfg.trainer)
    prepared = time.perf_counter()
    model, _ = fit_network(cfg, setup, log=lambda _: None)
    looped = time.perf_counter()
    setup.finish_model(model, cfg.model.score, cfg.seed)
    filled = time.perf_counter()
    networks = {f: fold_network(cfg, setup, f, fit_network_only) for f in fold_plan(cfg, setup, fit_network_only)}
    folded = time.perf_counter()
    choose_fusion(cfg, setup, model, networks, log=lambda _: None)
    chosen = time.perf_counter()
    fill = model.memory.fill_seconds
    started_default = time.perf_counter()
    result = train_local(compose_config(base), log=lambda _: None)
    local_fit_s = time.perf_counter() - started_default
    return {
        "local_fit_s": local_fit_s,  # prepare + loop + memory + folds beside the loop + choice
        "local_fit_fusion": result.fusion,  # the folds each process trained
        "prepare": prepared - started,
        "loop": looped - prepared,
        "folds": folded - filled,
        "folds_count": len(networks),
        # the memory fill: bank, isolation forest, reconstruction model (calibration split out below)
        "memory": filled - looped - fill["calibration"],
        "memory_forest": fill["forest"],
        "memory_reconstruction": fill["reconstruction"],
        # one-class scores of the calibration normals (references and their evidence) + the choice
        "calibration": fill["calibration"] + chosen - folded,
        "after_loop": chosen - looped,
        "total": chosen - started,
    }


def unsw_phases(args, tmp: str) -> dict:
    """fit_phases on UNSW-NB15 and the after-loop part of the same fit under 2 Ray Train workers."""
    full = overrides(args, "unsw_nb15", os.path.join(tmp, "runs"))
    phases = fit_phases(full)
    ray2_full = run_ray(full, 2, "unsw_nb15-ray2-full")
    phases["ray2_after_loop"] = ray2_full["after_loop_seconds"]
    phases["ray2_fusion"] = ray2_full["fusion"]
    print(f"fit phases (UNSW-NB15, local): {json.dumps({k: v for k, v in phases.items() if k != 'ray2_fusion'})}")
    return phases


def phases_only(args) -> int:
    """Re-measure fit_phases_s alone into an existing report, recording when and at which commit."""
    import ray

    from benchmarks.quality import git_commit

    ensure_prepared("unsw_nb15", args.data_root)
    output = Path(args.output)
    report = json.loads(output.read_text()) if output.is_file() else {"benchmark": "trainer"}
    with tempfile.TemporaryDirectory(prefix="metaad-bench-trainer-") as tmp:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 _temp_dir=os.path.join(tmp, "ray"), log_to_driver=False)
        try:
            report["fit_phases_s"] = unsw_phases(args, tmp)
        finally:
            ray.shutdown()
    report["fit_phases_measured"] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
        "command": "python benchmarks/trainer.py " + " ".join(sys.argv[1:]), "load_average": os.getloadavg(),
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote fit_phases_s into {output}")
    return 0


def ratios(best: dict, runs: dict) -> dict:
    local, ray1, ray2 = (best[k]["episodes_per_s"] for k in ("local", "ray1", "ray2"))
    same = runs["local_same_updates"][0]
    median = {k: statistics.median(row["episodes_per_s"] for row in v) for k, v in runs.items()}
    # CPU time of the training process(es) per episode, lowest of the repeats: what Ray adds in
    # work, whatever else runs on the machine (Ray's controller and raylet not counted).
    cpu = {k: min(row["cpu_ms_per_episode"] for row in v) for k, v in runs.items() if "cpu_ms_per_episode" in v[0]}
    return {
        "ray1_overhead": local / ray1 - 1,
        "ray2_speedup": ray2 / local,
        "ray2_speedup_ray_niceness": best["ray2_ray_niceness"]["episodes_per_s"] / local,
        "ray2_speedup_gloo": best["ray2_gloo"]["episodes_per_s"] / local,
        "ray2_speedup_sequential": best["ray2_sequential"]["episodes_per_s"] / best["local_sequential"]["episodes_per_s"],
        "ray2_vs_ray1": ray2 / ray1,
        # Two independent plain loops at once, over one: the most 2 processes get from this machine.
        "two_process_ceiling": best["local_x2"]["episodes_per_s"] / local,
        "ray2_of_ceiling": (ray2 / local) / (best["local_x2"]["episodes_per_s"] / local),
        "ray2_speedup_same_updates": ray2 / best["local_same_updates"]["episodes_per_s"],
        # Two plain processes in lockstep, no Ray: the ceiling of synchronous steps here.
        "lockstep_speedup": best["lockstep2"]["episodes_per_s"] / local,
        "ray2_of_lockstep": ray2 / best["lockstep2"]["episodes_per_s"],
        "ray2_auroc_delta": runs["ray2"][0]["held_out_auroc"] - same["held_out_auroc"],
        "held_out_auroc": {
            "local": runs["local"][0]["held_out_auroc"],
            "local_same_updates": same["held_out_auroc"],
            "ray2": runs["ray2"][0]["held_out_auroc"],
        },
        "sampler_wait_fraction": max(best["ray1"]["sampler_wait_fraction"], best["ray2"]["sampler_wait_fraction"]),
        "cpu_ms_per_episode": cpu,
        "ray1_cpu_overhead": cpu["ray1"] / cpu["local"] - 1,
        "median": {
            "episodes_per_s": median,
            "ray1_overhead": median["local"] / median["ray1"] - 1,
            "ray2_speedup": median["ray2"] / median["local"],
            "two_process_ceiling": median["local_x2"] / median["local"],
            "lockstep_speedup": median["lockstep2"] / median["local"],
        },
    }


def print_table(dataset: str, best: dict, summary: dict) -> None:
    print(f"\n{dataset}\n{'variant':<18} {'episodes/s':>11} {'loop s':>8} {'wall s':>8} {'sampler wait':>13} "
          f"{'all-reduce':>11} {'reports':>8} {'CPU ms/ep':>10} {'held-out':>9}")
    pct = lambda row, key: f"{100 * row[key]:.2f}%" if row.get(key) is not None else "-"  # noqa: E731
    num = lambda row, key, spec: format(row[key], spec) if row.get(key) is not None else "-"  # noqa: E731
    for k, row in best.items():
        print(f"{k:<18} {row['episodes_per_s']:>11.1f} {num(row, 'loop_seconds', '.2f'):>8} "
              f"{num(row, 'wall_seconds', '.1f'):>8} {pct(row, 'sampler_wait_fraction'):>13} "
              f"{pct(row, 'allreduce_fraction'):>11} {pct(row, 'report_fraction'):>8} "
              f"{num(row, 'cpu_ms_per_episode', '.2f'):>10} {num(row, 'held_out_auroc', '.4f'):>9}")
    print(
        f"ray1_overhead {100 * summary['ray1_overhead']:.1f}%, ray2_speedup {summary['ray2_speedup']:.2f}x over local "
        f"(two independent plain loops reach {summary['two_process_ceiling']:.2f}x: ray2 at "
        f"{summary['ray2_of_ceiling']:.2f} of it; two processes in lockstep without Ray "
        f"{summary['lockstep_speedup']:.2f}x, ray2 at {summary['ray2_of_lockstep']:.2f} of that; "
        f"{summary['ray2_speedup_same_updates']:.2f}x over the plain loop "
        f"at 2E per step; sequential order {summary['ray2_speedup_sequential']:.2f}x), ray2_auroc_delta {summary['ray2_auroc_delta']:+.4f} (vs that loop), "
        f"sampler_wait_fraction {100 * summary['sampler_wait_fraction']:.2f}%; median runs: ray2_speedup "
        f"{summary['median']['ray2_speedup']:.2f}x, ceiling {summary['median']['two_process_ceiling']:.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--episodes", type=int, default=0, help="per run (default: 2000 digits, 600 UNSW-NB15)")
    parser.add_argument("--episodes-per-step", type=int, default=1, help="meta.episodes_per_step of every variant")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--validate-every", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--no-phases", action="store_true", help="skip fit_phases_s (the full UNSW-NB15 fits)")
    parser.add_argument("--phases-only", action="store_true",
                        help="measure fit_phases_s alone and replace it in --output's report (noted there)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every variant, e.g. --set meta.n_support=1024")
    parser.add_argument("--data-root", default=str(REPO / "prepared"), help="prepared datasets (metaad prepare output)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "trainer.json"))
    args = parser.parse_args()

    import ray

    if args.phases_only:
        return phases_only(args)
    for dataset in args.datasets:
        if dataset != "digits":
            ensure_prepared(dataset, args.data_root)
    runs = {d: {"local": [], "ray1": [], "ray2": [], "ray2_ray_niceness": [], "ray2_gloo": [], "local_x2": [], "lockstep2": [],
                "local_sequential": [], "ray2_sequential": [], "local_same_updates": []}
            for d in args.datasets}
    load_before = os.getloadavg()
    phases = None
    with tempfile.TemporaryDirectory(prefix="metaad-bench-trainer-") as tmp:
        ray.init(
            num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
            _temp_dir=os.path.join(tmp, "ray"), log_to_driver=False,
        )
        try:
            for r in range(args.repeats):
                for dataset in args.datasets:
                    base = [*overrides(args, dataset, os.path.join(tmp, "runs")), *THROUGHPUT]
                    rows = runs[dataset]
                    rows["local"].append(run_local(base, auroc=r == 0))
                    rows["ray1"].append(run_ray(base, 1, f"{dataset}-ray1-{r}"))
                    rows["ray2"].append(run_ray(base, 2, f"{dataset}-ray2-{r}", auroc=r == 0))
                    # the same run with the workers at Ray's own niceness (15), as before the setting
                    rows["ray2_ray_niceness"].append(run_ray([*base, "trainer.worker_niceness=-1"], 2,
                                                             f"{dataset}-ray2-nice15-{r}"))
                    # the same run with the gradients summed by gloo (the default before session 20)
                    rows["ray2_gloo"].append(run_ray([*base, "trainer.grad_collective=all_gather"], 2,
                                                     f"{dataset}-ray2-gloo-{r}"))
                    rows["local_x2"].append(run_two_independent(base))
                    rows["lockstep2"].append(run_lockstep(base))
                    # both levels' gradients in two collectives per step (the order before session 16)
                    sequential = [*base, "meta.update_order=sequential"]
                    rows["local_sequential"].append(run_local(sequential, auroc=False))
                    rows["ray2_sequential"].append(run_ray(sequential, 2, f"{dataset}-ray2-sequential-{r}"))
                    if r == 0:  # the reference for ray2's held-out AUROC: the same updates, one process
                        same = [*base, f"meta.episodes_per_step={2 * args.episodes_per_step}"]
                        rows["local_same_updates"].append(run_local(same, auroc=True))
                    print(f"repeat {r + 1}/{args.repeats} {dataset}: " + ", ".join(
                        f"{k} {v[-1]['episodes_per_s']:.1f} episodes/s" for k, v in rows.items()
                    ), flush=True)
            if "unsw_nb15" in args.datasets and not args.no_phases:
                phases = unsw_phases(args, tmp)
        finally:
            ray.shutdown()

    load_after = os.getloadavg()
    best = {d: {k: max(v, key=lambda row: row["episodes_per_s"]) for k, v in rows.items()} for d, rows in runs.items()}
    per_dataset = {d: ratios(best[d], runs[d]) for d in args.datasets}
    for d in args.datasets:
        print_table(d, best[d], per_dataset[d])
    first = args.datasets[0]
    summary = {
        # digits (the first dataset) under the historical keys; UNSW-NB15 beside them
        "ray1_overhead": per_dataset[first]["ray1_overhead"],
        "ray2_speedup": per_dataset[first]["ray2_speedup"],
        "two_process_ceiling": per_dataset[first]["two_process_ceiling"],
        "sampler_wait_fraction": max(p["sampler_wait_fraction"] for p in per_dataset.values()),
        "ray2_auroc_delta": {d: p["ray2_auroc_delta"] for d, p in per_dataset.items()},
        "ray2_speedup_same_updates": {d: p["ray2_speedup_same_updates"] for d, p in per_dataset.items()},
        "ray2_speedup_ray_niceness": {d: p["ray2_speedup_ray_niceness"] for d, p in per_dataset.items()},
        "ray2_speedup_sequential": {d: p["ray2_speedup_sequential"] for d, p in per_dataset.items()},
        "lockstep_speedup": {d: p["lockstep_speedup"] for d, p in per_dataset.items()},
    }
    if "unsw_nb15" in per_dataset:
        summary["ray2_speedup_unsw"] = per_dataset["unsw_nb15"]["ray2_speedup"]
        summary["two_process_ceiling_unsw"] = per_dataset["unsw_nb15"]["two_process_ceiling"]
    summary["targets"] = {"ray2_speedup_min": 1.4, "ray2_of_ceiling_min": 0.85, "ray2_auroc_delta_max": 0.01,
                          "ray1_overhead_max": 0.10, "sampler_wait_fraction_max": 0.05}
    summary["meets_targets"] = {
        d: {"ray2_speedup": p["ray2_speedup"] >= 1.4, "ray2_of_ceiling": p["ray2_of_ceiling"] >= 0.85,
            "ray2_auroc_delta": abs(p["ray2_auroc_delta"]) <= 0.01}
        for d, p in per_dataset.items()
    }
    summary["fit_phases_s"] = phases
    print(f"\nsummary: {json.dumps({k: v for k, v in summary.items() if k != 'fit_phases_s'})}")
    report = {
        "benchmark": "trainer",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            # 1/5/15-minute load averages: other processes on the machine slow the 2-worker run most,
            # since every step waits for both workers at its all-reduce.
            "load_average_before": load_before, "load_average_after": load_after,
        },
        "config": {k: v for k, v in vars(args).items() if k not in ("output", "data_root")}
        | {"throughput_overrides": THROUGHPUT},
        **summary,
        "per_dataset": per_dataset,
        "best": best,
        "runs": runs,
    }
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} ({os.cpu_count()} CPUs)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
