"""Out-of-core training at 1x and 10x data (issue 18): memory per process must not grow with the data.

    python benchmarks/scale.py --rows 2000000 --scale 10 --episodes 400

Writes synthetic datasets (benchmarks/make_synthetic.py, 32 float32 features, one normal family)
of `rows` and `rows * scale` rows to the real S3 test server (SeaweedFS on 127.0.0.1), then
trains each with `trainer=ray trainer.num_workers=2 trainer.sampler=actors` for a fixed number
of episodes, each run in a fresh process with its own local Ray instance, one after the other
in this one invocation. While a run trains, every process of it (the driver, the Ray Train
workers, the sampler actors, the plan task, Ray's own) is sampled with psutil every 0.1 s; the
peak RSS of each is recorded by role. Setup seconds are the driver's (bounded fit sample and
the pool's plan, `metrics.json` data.driver_setup_seconds) plus the workers' (entering the loop
function to the first episode); episodes/s is the loop's. The fusion choice (its fold networks
are after-the-loop work that issue 19 moves) is skipped with a single fusion candidate.
Results: benchmarks/results/scale.json and scale_rss.png (peak RSS against rows).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

ROLES = {  # substring of the process title -> role
    "RayTrainWorker": "train_worker", "FamilyShardActor": "sampler_actor", "_plan_task": "plan_task",
    "TrainController": "train_controller",
}
PROJECT_ROLES = ("driver", "train_worker", "sampler_actor", "plan_task")


class ProcessPeaks:
    """Peak RSS of this process and every descendant, sampled every `every_s` seconds."""

    def __init__(self, every_s: float = 0.1):
        import psutil

        self.me = psutil.Process()
        self.every_s = every_s
        self.peaks: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _role(self, proc) -> str:
        if proc.pid == self.me.pid:
            return "driver"
        try:
            title = " ".join(proc.cmdline())
        except Exception:
            return "gone"
        for key, role in ROLES.items():
            if key in title:
                return role
        if "ray::" in title:
            return "ray_idle_worker"
        return "ray_system"

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for proc in [self.me, *self.me.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                entry = self.peaks.setdefault(proc.pid, {"rss": 0, "roles": set()})
                entry["rss"] = max(entry["rss"], rss)
                role = self._role(proc)
                if role != "gone":
                    entry["roles"].add(role)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "ProcessPeaks":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def by_role(self) -> dict[str, list[int]]:
        """Peak RSS of each process under its most specific role (a pooled worker that ran the
        plan task counts as plan_task, not as an idle worker)."""
        order = ["driver", *ROLES.values(), "ray_idle_worker", "ray_system"]
        out: dict[str, list[int]] = {}
        for entry in self.peaks.values():
            roles = entry["roles"] or {"ray_system"}
            role = min(roles, key=order.index)
            out.setdefault(role, []).append(entry["rss"])
        return {k: sorted(v, reverse=True) for k, v in out.items()}


def child(args) -> int:
    """One measured training run (this process is the driver)."""
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"})
    import ray

    from metaad_dist.cli import compose_config
    from metaad_dist.train.ray_trainer import train_ray

    overrides = [
        "data=synthetic_bench", f"data.path={args.uri}", "model=mlp", "trainer=ray", "trainer.num_workers=2",
        "trainer.sampler=actors", f"meta.episodes={args.episodes}", "model.fusion_candidates=[[1,0.5,0,0]]",
        f"storage.root={args.runs}", f"storage.endpoint_url={args.endpoint}", f"run=scale-{args.label}",
        "trainer.checkpoint_every=0", "quiet=true",
    ]
    with ProcessPeaks() as peaks:
        ray.init(num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        started = time.perf_counter()
        cfg = compose_config(overrides)
        train_ray(cfg)
        wall = time.perf_counter() - started
        ray.shutdown()
    metrics = json.loads((Path(args.runs) / f"scale-{args.label}" / "metrics.json").read_text())
    trainer, data = metrics["trainer"], metrics["data"]
    print(json.dumps({
        "label": args.label, "wall_s": wall, "peak_rss_by_role": peaks.by_role(),
        "driver_setup_s": data["driver_setup_seconds"], "worker_setup_s": trainer["worker_setup_seconds"],
        "setup_s": data["driver_setup_seconds"] + trainer["worker_setup_seconds"],
        "episodes_per_s": trainer["loop_episodes_per_s"], "data": data, "overrides": overrides,
    }))
    return 0


DATA_CONFIG = """# written by benchmarks/scale.py: the synthetic dataset of benchmarks/make_synthetic.py
name: synthetic_bench
path: ???
normal: [normal]
meta: [a00, a01, a02]
held_out: [a03]
scaler: standard
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of the 1x dataset")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--episodes", type=int, default=400)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="interleaved 1x/10x rounds; the fastest of each counts")
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--uri", help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    p.add_argument("--runs", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from s3_server import SeaweedS3

    work = Path(tempfile.mkdtemp(prefix="metaad-scale-"))
    configs = work / "configs"
    import shutil

    shutil.copytree(REPO / "configs", configs)
    (configs / "data" / "synthetic_bench.yaml").write_text(DATA_CONFIG)
    server = SeaweedS3().start()
    env = {**os.environ, **server.env(), "METAAD_CONFIG_DIR": str(configs)}
    results: dict = {"runs": {}}
    try:
        server.client().create_bucket(Bucket="bench")
        sizes = {"1x": args.rows, f"{args.scale}x": args.rows * args.scale}
        datasets = {}
        for label, rows in sizes.items():
            uri = f"s3://bench/scale-{label}"
            t0 = time.perf_counter()
            made = subprocess.run(
                [sys.executable, str(REPO / "benchmarks" / "make_synthetic.py"), "--rows", str(rows), "--features",
                 str(args.features), "--families", "4", "--output", uri, "--endpoint-url", server.endpoint_url],
                env=env, check=True, capture_output=True, text=True)
            info = json.loads(made.stdout)
            info["make_s"] = time.perf_counter() - t0
            datasets[label] = (uri, info)
            print(f"[scale] {label}: {rows:,} rows, {info['bytes'] / 2**30:.2f} GiB of shards in {info['make_s']:.0f}s",
                  flush=True)
        # Interleaved rounds on this shared machine; each label keeps its fastest run's figures.
        for round_ in range(args.rounds):
            for label, rows in sizes.items():
                uri, info = datasets[label]
                run = subprocess.run(
                    [sys.executable, __file__, "--child", "--uri", uri, "--label", f"{label}-{round_}",
                     "--runs", str(work / "runs"), "--endpoint", server.endpoint_url, "--episodes", str(args.episodes),
                     "--cpus", str(args.cpus)],
                    env=env, capture_output=True, text=True)
                if run.returncode != 0:  # one failed run is reported, the others still count
                    tail = run.stderr.strip().splitlines()[-15:]
                    print(f"[scale] {label} round {round_} failed (rc {run.returncode}):\n  " + "\n  ".join(tail), flush=True)
                    results.setdefault("failed_runs", []).append({"label": label, "round": round_, "stderr_tail": tail})
                    continue
                measured = json.loads(run.stdout.strip().splitlines()[-1])
                measured.update(rows=rows, dataset=info, feature_bytes=rows * args.features * 4, round=round_)
                results.setdefault("all_runs", []).append(measured)
                best = results["runs"].get(label)
                if best is None or measured["episodes_per_s"] > best["episodes_per_s"]:
                    results["runs"][label] = measured
                peaks = measured["peak_rss_by_role"]
                print(f"[scale] {label} round {round_}: setup {measured['setup_s']:.1f}s "
                      f"(driver {measured['driver_setup_s']:.1f}s: {measured['data']['phase_seconds']}, "
                      f"workers {measured['worker_setup_s']:.1f}s), "
                      f"{measured['episodes_per_s']:.1f} episodes/s, peak RSS "
                      + ", ".join(f"{r} {max(v) / 2**20:.0f} MiB" for r, v in peaks.items()), flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    one, big = results["runs"]["1x"], results["runs"][f"{args.scale}x"]

    def project_peak(run: dict) -> int:
        return max(max(run["peak_rss_by_role"].get(r, [0])) for r in PROJECT_ROLES)

    results.update({
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "rows_1x": args.rows, "rows_10x": args.rows * args.scale, "features": args.features,
        "episodes": args.episodes, "trainer": "ray, 2 workers, sampler actors (2), data on the SeaweedFS S3 server",
        "peak_rss_ratio_10x": max(project_peak(r) for r in results["all_runs"] if r["rows"] > args.rows)
        / max(project_peak(r) for r in results["all_runs"] if r["rows"] == args.rows),
        "setup_s_ratio_10x": min(r["setup_s"] for r in results["all_runs"] if r["rows"] > args.rows)
        / min(r["setup_s"] for r in results["all_runs"] if r["rows"] == args.rows),
        "episodes_per_s_ratio_10x": big["episodes_per_s"] / one["episodes_per_s"],
        "dataset_bytes_10x": big["dataset"]["bytes"],
        "feature_bytes_10x": big["feature_bytes"],
        "max_process_rss_bytes_10x": max(project_peak(r) for r in results["all_runs"] if r["rows"] > args.rows),
        "max_process_rss_bytes_1x": max(project_peak(r) for r in results["all_runs"] if r["rows"] == args.rows),
        "targets": {"peak_rss_ratio_10x": "<= 1.2", "setup_s_ratio_10x": "<= 1.5",
                    "episodes_per_s_ratio_10x": ">= 0.9", "feature_bytes_10x": "> max_process_rss_bytes_10x"},
    })
    results["met"] = {
        "peak_rss_ratio_10x": results["peak_rss_ratio_10x"] <= 1.2,
        "setup_s_ratio_10x": results["setup_s_ratio_10x"] <= 1.5,
        "episodes_per_s_ratio_10x": results["episodes_per_s_ratio_10x"] >= 0.9,
        "feature_bytes_10x": results["feature_bytes_10x"] > results["max_process_rss_bytes_10x"],
    }
    Path(args.output).write_text(json.dumps(results, indent=1, default=list) + "\n")
    plot(results, Path(args.output).with_name("scale_rss.png"))
    print(f"\n{'':24}{'1x':>12}{f'{args.scale}x':>12}{'ratio':>8}")
    for name, key, unit in (("max process peak RSS", None, "MiB"), ("setup s", "setup_s", ""),
                            ("episodes/s", "episodes_per_s", "")):
        a = project_peak(one) / 2**20 if key is None else one[key]
        b = project_peak(big) / 2**20 if key is None else big[key]
        print(f"{name:24}{a:12.1f}{b:12.1f}{b / a:8.2f}")
    print(f"10x feature bytes {results['feature_bytes_10x'] / 2**30:.2f} GiB vs largest process "
          f"{results['max_process_rss_bytes_10x'] / 2**30:.2f} GiB; met: {results['met']}")
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    runs = sorted(results["runs"].values(), key=lambda r: r["rows"])
    for role in PROJECT_ROLES:
        ys = [max(r["peak_rss_by_role"].get(role, [0])) / 2**20 for r in runs]
        if any(ys):
            ax.plot([r["rows"] for r in runs], ys, marker="o", label=role)
    ax.plot([r["rows"] for r in runs], [r["feature_bytes"] / 2**20 for r in runs], "k--", label="dataset features")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dataset rows")
    ax.set_ylabel("peak RSS per process (MiB)")
    ax.set_title("metaad train, 2 Ray Train workers, sampler actors")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
