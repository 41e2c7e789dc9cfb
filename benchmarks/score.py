"""Score throughput and memory (issue 20): Ray Data path vs the in-process path vs pyarrow's reader.

A digits run is trained (60 episodes), then digits rows (64 float32 pixel columns plus an id,
tiled with noise) are written as Parquet files of --file-rows rows: --rows rows (1x) and
10 x --rows rows (10x). Measured side by side, interleaved, best of --repeats:
  - pyarrow.dataset reading the 1x folder (the ceiling: read only, multithreaded, no scoring),
  - the in-process path (`metaad score` on one file, scoring.score_in_process) on the 1x rows,
  - the Ray Data path (score_command.score_command on the 1x folder) on a warm local Ray instance;
then the Ray Data path once on the 10x folder (parallel_vs_single_10x: its rate over the in-process
rate, with the per-job start-up amortised). peak_rss_bytes: the peak of the summed PSS (resident
memory, shared pages split among their mappers) of this process and all its descendants (Ray's
raylet, object store and workers included).

Sampling that sum reads /proc/<pid>/smaps_rollup of every process in the tree, ~65 ms of CPU per
sample here: at 0.1 s it took ~40 % of a core, which the in-process path (one core busy) did not
miss and the Ray Data path (both cores busy) did. So the 1x peaks come from the untimed warm-up
round, the timed rounds run unsampled, and the 10x run is timed and sampled at once; both sample
every --rss-every seconds (1 s: ~3 % of the two cores), so that the 10x/1x ratio compares like
with like.

    .venv/bin/python benchmarks/score.py [--rows 1000000] [--repeats 2]

Prints a table and writes benchmarks/results/score.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def tree_rss(root: int) -> int:
    """Summed proportional set size (PSS) of `root` and its descendants, from /proc.

    PSS, not RSS: Ray's object store is shared memory mapped by the raylet and by every worker
    that reads a block, and summing RSS would count each shared page once per mapper. PSS splits
    a shared page among its mappers, so the sum is the memory the process tree really holds.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))  # fields[1]: ppid
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _pss(pid)
        todo += children.get(pid, [])
    return total


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # the process ended meanwhile
        pass
    return 0


class PeakRss:
    """Peak summed PSS of this process tree while the block runs, sampled every `every` seconds."""

    def __init__(self, every: float = 0.1):
        self.every = every

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_inputs(folder: Path, rows: int, file_rows: int, seed: int) -> int:
    from sklearn.datasets import load_digits

    base = load_digits().data.astype(np.float32)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for part, start in enumerate(range(0, rows, file_rows)):
        n = min(file_rows, rows - start)
        x = base[rng.integers(0, len(base), n)] + rng.normal(scale=0.5, size=(n, 64)).astype(np.float32)
        table = pa.table({"id": np.arange(start, start + n), **{f"pixel_{i}": x[:, i] for i in range(64)}})
        pq.write_table(table, folder / f"rows-{part:05d}.parquet")
    return sum(f.stat().st_size for f in folder.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the 1x input (10x is ten times this)")
    parser.add_argument("--file-rows", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-every", type=float, default=1.0, help="seconds between memory samples of the 10x run")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "score.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from metaad_dist.cli import compose_config, main as metaad  # first: it makes a local Ray bind 127.0.0.1
    from metaad_dist.data.storage import open_location
    from metaad_dist.eval.score_command import score_command
    from metaad_dist.eval.scoring import list_inputs, score_in_process
    from metaad_dist.train.artifacts import load_run
    from metaad_dist.train.setup import configure_torch

    import ray

    work = Path(tempfile.mkdtemp(prefix="metaad-bench-score-"))
    try:
        root = work / "runs"
        assert metaad(["train", f"storage.root={root}", "run=quick", "meta.episodes=60", "quiet=true"]) == 0
        one, ten = work / "x1", work / "x10"
        bytes_1x = write_inputs(one, args.rows, args.file_rows, 0)
        bytes_10x = write_inputs(ten, 10 * args.rows, args.file_rows, 1)
        single = work / "single.parquet"
        pq.write_table(pads.dataset(str(one), format="parquet").to_table(), single)

        def cfg_for(src, out):
            return compose_config([f"storage.root={root}", "run=quick", f"input={src}", f"output={out}", "quiet=true"])

        cfg = cfg_for(single, work / "s.parquet")
        trained, payload = load_run(open_location(str(root / "quick")))
        device = configure_torch(cfg.trainer)
        loc, files = list_inputs(str(single), cfg.storage)
        sink = open_location(str(work))

        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        seconds = {"pyarrow_read": [], "single": [], "parallel": []}
        rss = {}
        runs = {
            "pyarrow_read": lambda: pads.dataset(str(one), format="parquet").to_table(),
            "single": lambda: score_in_process(files[0], loc.fs, sink, "s.parquet", trained, payload,
                                               cfg.score.batch_rows, device),
            "parallel": lambda: score_command(cfg_for(one, work / "out1")),
        }
        for name, fn in runs.items():  # untimed: warms Ray's workers and the page cache, measures memory
            with PeakRss(args.rss_every) as peak:
                fn()
            rss[name] = peak.peak
        for _ in range(args.repeats):
            for name, fn in runs.items():
                started = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - started)
        with PeakRss(args.rss_every) as peak10:
            started = time.perf_counter()
            score_command(cfg_for(ten, work / "out10"))
            ten_s = time.perf_counter() - started
        marker = json.loads((work / "out10" / "_SUCCESS.json").read_text())
        assert marker["rows"] == 10 * args.rows, marker["rows"]
        cpus = ray.cluster_resources().get("CPU")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {k: min(v) for k, v in seconds.items()}
    rate = {k: args.rows / v for k, v in best.items()}
    results = {
        "benchmark": "score",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "ray_cpus": cpus, "python": platform.python_version(),
                    "pyarrow": pa.__version__, "load_average_1m": os.getloadavg()[0]},
        "input": {"rows_1x": args.rows, "rows_10x": 10 * args.rows, "file_rows": args.file_rows,
                  "parquet_bytes_1x": bytes_1x, "parquet_bytes_10x": bytes_10x, "features": 64,
                  "model": "digits run, meta.episodes=60"},
        "repeats": args.repeats,
        "rss_sampling": {"every_s": args.rss_every, "1x": "the untimed warm-up round", "10x": "the timed run"},
        "rows_per_s": {"pyarrow_read_1x": rate["pyarrow_read"], "single_1x": rate["single"],
                       "parallel_1x": rate["parallel"], "parallel_10x": 10 * args.rows / ten_s},
        "seconds": {**{f"{k}_1x": v for k, v in seconds.items()}, "parallel_10x": ten_s},
        "peak_rss_bytes": {"single_1x": rss["single"], "parallel_1x": rss["parallel"], "parallel_10x": peak10.peak},
        "peak_rss_ratio_10x": peak10.peak / rss["parallel"],
        "parallel_vs_single": best["single"] / best["parallel"],
        # the 10x job's rate over the in-process rate (which does not depend on the input size):
        # the per-job start-up (actors importing torch, file listing, the write tail) amortised
        "parallel_vs_single_10x": (10 * args.rows / ten_s) / rate["single"],
        "parallel_vs_ceiling": best["pyarrow_read"] / best["parallel"],
    }
    print(f"score benchmark: {args.rows:,} rows (1x) and {10 * args.rows:,} (10x), 64 features, "
          f"best of {args.repeats}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'measurement':<40}{'rows/s':>14}{'seconds':>10}{'peak RSS MB':>13}")
    for name, label in (("pyarrow_read", "pyarrow.dataset read (ceiling)"), ("single", "in-process path, 1x"),
                        ("parallel", "Ray Data path, 1x")):
        print(f"{label:<40}{rate[name]:>14,.0f}{best[name]:>10.2f}{rss[name] / 1e6:>13,.0f}")
    print(f"{'Ray Data path, 10x':<40}{10 * args.rows / ten_s:>14,.0f}{ten_s:>10.2f}{peak10.peak / 1e6:>13,.0f}")
    print(f"parallel_vs_single {results['parallel_vs_single']:.2f} (10x: {results['parallel_vs_single_10x']:.2f})  peak_rss_ratio_10x {results['peak_rss_ratio_10x']:.2f}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
