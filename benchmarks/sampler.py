"""Sampler throughput and memory (docs/method.md section 8; issue 4).

Side by side in one run, on a synthetic dataset (benchmarks/make_synthetic.py) prepared into a
real S3-compatible server on 127.0.0.1 (SeaweedFS, tests/s3_server.py):
  - ceiling: the in-memory EpisodeSampler over numpy arrays of the same (scaled) training rows;
  - pool: SamplerPool (Ray sampler actors streaming row groups from S3), consumed by one caller
    through `pool.episode(i)`, prefetch on;
  - naive: a reader that reads one whole shard of the normal family from S3 per episode;
and the peak memory (RSS) of the sampler pool's actor processes, sampled with psutil while it
runs, on the dataset and on one --scale times larger.

    .venv/bin/python benchmarks/sampler.py [--rows 2000000] [--scale 10] [--episodes 3000]

Prints a table and writes benchmarks/results/sampler.json (keys ratio_vs_ceiling, ratio_vs_naive,
memory_growth_10x, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import ray  # noqa: E402  (before psutil: Ray ships psutil in ray/thirdparty_files and puts it on the path)
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from make_synthetic import family_names, make_synthetic  # noqa: E402
from metaad_dist.config import Config, DataConfig, MetaConfig, SamplerConfig, StorageConfig  # noqa: E402
from metaad_dist.data.manifest import ROW_ID, family_shards  # noqa: E402
from metaad_dist.data.prepared import PreparedSource  # noqa: E402
from metaad_dist.data.roles import FamilyRoles  # noqa: E402
from metaad_dist.data.scaling import FeatureScaler  # noqa: E402
from metaad_dist.data.views import build_training_view, split_normal_positions  # noqa: E402
from metaad_dist.episodes.sampler import EpisodeSampler  # noqa: E402
from metaad_dist.meta.labels import ClassLabeler  # noqa: E402

LABEL_SAMPLE = 20000  # rows the k-means pseudo-classes are fitted on


class PeakMemory:
    """Samples the summed RSS (and USS: pages private to each process, so without the shared
    object-store pages it maps) of some processes in a thread; keeps the peaks."""

    def __init__(self, pids: list[int], every_s: float = 0.1):
        self.procs = [psutil.Process(p) for p in pids]
        self.every_s = every_s
        self.rss = self.uss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = uss = 0
            for p in self.procs:
                try:
                    info = p.memory_full_info()
                    rss, uss = rss + info.rss, uss + info.uss
                except psutil.Error:
                    pass
            self.rss, self.uss = max(self.rss, rss), max(self.uss, uss)
            self.samples += 1
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def experiment(uri: str, storage: StorageConfig, families: int, args) -> Config:
    names = family_names(families)
    data = DataConfig(name="synthetic", path=uri, normal=[names[0]], meta=names[1:-1], held_out=names[-1:])
    meta = MetaConfig(n_support=args.n_support, n_query=args.n_query, k_shot=args.k_shot, budget=args.budget,
                      meta_per_episode=args.meta_per_episode)
    sampler = SamplerConfig(num_actors=args.num_actors, buffer_rows=args.buffer_rows, reuse=args.reuse,
                            prefetch=args.prefetch, episodes_per_call=args.episodes_per_call)
    return Config(data=data, meta=meta, sampler=sampler, storage=storage, seed=args.seed)


def cpu_seconds(procs: list) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def timed(get, indices, helpers: list = ()) -> dict:
    """Wall time of getting these episodes, and CPU time of this process plus `helpers` (processes)."""
    cpu0, helpers0, t0 = time.process_time(), cpu_seconds(helpers), time.perf_counter()
    rows = 0
    for i in indices:
        e = get(int(i))
        rows += len(e.support_x) + len(e.query_x) + len(e.shots_x)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0 + cpu_seconds(helpers) - helpers0
    return {"episodes": len(indices), "seconds": seconds, "episodes_per_s": len(indices) / seconds,
            "rows_per_s": rows / seconds, "cpu_us_per_episode": cpu / len(indices) * 1e6}


def summary(rounds: list[dict]) -> dict:
    """Best round (least disturbed by other load on the machine) and the median, with every round."""
    rates = sorted(r["episodes_per_s"] for r in rounds)
    best = max(rounds, key=lambda r: r["episodes_per_s"])
    return {"episodes_per_s": best["episodes_per_s"], "rows_per_s": best["rows_per_s"],
            "median_episodes_per_s": float(np.median(rates)),
            "cpu_us_per_episode": float(np.median([r["cpu_us_per_episode"] for r in rounds])), "rounds": rounds}


def run_pool(cfg: Config, scaler, labeler, budget_row_ids, episodes: int, rounds: int,
             ceiling: EpisodeSampler | None = None) -> tuple[dict, dict | None]:
    """Pool rounds of `episodes` consecutive episodes; with a ceiling sampler, its rounds interleaved
    on the same episode indices (so load from elsewhere on the machine hits both alike)."""
    from metaad_dist.episodes.actors import SamplerPool

    started = time.perf_counter()
    pool = SamplerPool(cfg, scaler, labeler, budget_row_ids)
    plan_s = time.perf_counter() - started
    pids = [m["pid"] for m in pool.memory()]
    pool_rounds, ceiling_rounds = [], []
    with PeakMemory(pids) as peak:
        t0 = time.perf_counter()
        pool.episode(0)  # actors' first buffers
        first_s = time.perf_counter() - t0
        if ceiling is not None:
            ceiling.episode(0)
        for r in range(rounds):
            indices = np.arange(1 + r * episodes, 1 + (r + 1) * episodes)
            if ceiling is not None:
                ceiling_rounds.append(timed(ceiling.episode, indices))
            pool_rounds.append(timed(pool.episode, indices, peak.procs))
    memory = pool.memory()
    counters = pool.read_counters()
    out = {
        **summary(pool_rounds),
        "plan_seconds": plan_s, "first_episode_seconds": first_s, "refill_period": pool.refill_period,
        "peak_rss_bytes": peak.rss, "peak_uss_bytes": peak.uss, "memory_samples": peak.samples,
        "actor_peak_rss_bytes": [m["peak_rss"] for m in memory], "plan_task_peak_rss_bytes": pool.plan_peak_rss,
        "rows_read": {f: c["rows_read"] for f, c in counters.items() if c["rows_read"]},
        "rows_kept": {f: c["rows_kept"] for f, c in counters.items() if c["rows_kept"]},
        "bytes_read": sum(c["bytes_read"] for c in counters.values()),
        # once, by the plan task: row ids of the normal families (and of the meta families when the
        # budget pools are drawn there), and the row groups that hold budget rows
        "plan_bytes_read": sum(c["bytes_read"] for c in pool.plan_counters.values()),
        "held_out_reads": sum(counters[f]["rows_read"] + counters[f]["id_rows_read"] + counters[f]["files_opened"]
                              for f in cfg.data.held_out),
    }
    pool.shutdown()
    return out, (summary(ceiling_rounds) if ceiling is not None else None)


def run_naive(source: PreparedSource, family: str, train_ids: np.ndarray, scaler, labeler, budget_x, meta, seed,
              episodes: int) -> dict:
    """One whole shard of the normal family read from S3 per episode, then the same draws."""
    shards = family_shards(source.manifest, family)
    columns = [ROW_ID] + source.feature_names
    t0, cpu0 = time.perf_counter(), time.process_time()
    rows = 0
    for i in range(episodes):
        rng = np.random.default_rng([seed, i])
        shard = shards[int(rng.integers(len(shards)))]
        path = source.location.path(source.manifest["shard_root"], shard["path"])
        table = pq.read_table(path, filesystem=source.location.fs, columns=columns)
        ids = table.column(ROW_ID).to_numpy()
        keep = np.isin(ids, train_ids, assume_unique=True)
        x = np.stack([table.column(n).to_numpy()[keep] for n in source.feature_names], axis=1)
        x = scaler.transform(x)
        y = labeler.predict(x, np.zeros(len(x), dtype=np.int64))
        drawn = rng.choice(len(x), meta.n_support + meta.n_query, replace=False)
        support, query = x[drawn[:meta.n_support]], x[drawn[meta.n_support:]]
        _ = y[drawn]
        shots = [pool[rng.choice(len(pool), min(meta.k_shot, len(pool)), replace=False)] for pool in budget_x.values()]
        rows += len(support) + len(query) + sum(len(s) for s in shots)
    seconds = time.perf_counter() - t0
    return {"episodes": episodes, "seconds": seconds, "episodes_per_s": episodes / seconds, "rows_per_s": rows / seconds,
            "cpu_us_per_episode": (time.process_time() - cpu0) / episodes * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of the 1x dataset")
    p.add_argument("--scale", type=int, default=10, help="the larger dataset has rows * scale rows (0 skips it)")
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--families", type=int, default=20, help="anomaly families (one is held out)")
    p.add_argument("--episodes", type=int, default=2000, help="episodes per timed round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (ceiling and pool interleaved); best counts")
    p.add_argument("--naive-episodes", type=int, default=10)
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--buffer-rows", type=int, default=65536)
    p.add_argument("--reuse", type=float, default=4.0)
    p.add_argument("--prefetch", type=int, default=128)
    p.add_argument("--episodes-per-call", type=int, default=32)
    p.add_argument("--n-support", type=int, default=256)
    p.add_argument("--n-query", type=int, default=256)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--budget", type=int, default=10)
    p.add_argument("--meta-per-episode", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "sampler.json"))
    args = p.parse_args()

    from s3_server import SeaweedS3

    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0"})
    server = SeaweedS3().start()
    results: dict = {}
    try:
        os.environ.update(server.env())
        server.client().create_bucket(Bucket="bench")
        storage = StorageConfig(endpoint_url=server.endpoint_url)
        ray.init(num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)

        # ---------------------------------------------------------------- 1x
        uri = "s3://bench/synthetic-1x"
        t0 = time.perf_counter()
        manifest = make_synthetic(uri, args.rows, args.features, args.families, seed=args.seed, storage=storage)
        make_1x_s = time.perf_counter() - t0
        cfg = experiment(uri, storage, args.families, args)
        source = PreparedSource(uri, storage)
        roles = FamilyRoles.from_config(cfg.data, source.family_names())
        view = build_training_view(source, roles, cfg.data, cfg.meta, cfg.seed)
        scaler = FeatureScaler(cfg.data.scaler, cfg.seed).fit(view.normal_x)
        normal_x = scaler.transform(view.normal_x)
        del view.normal_x
        labeler = ClassLabeler(1, 16, cfg.seed)
        sample = np.random.default_rng(cfg.seed).choice(len(normal_x), min(LABEL_SAMPLE, len(normal_x)), replace=False)
        labeler.fit_transform(normal_x[np.sort(sample)], np.zeros(len(sample), dtype=np.int64))
        labels = labeler.predict(normal_x, view.normal_family_index)
        budget_x = {f: scaler.transform(x) for f, x in view.budget_x.items()}
        ceiling_sampler = EpisodeSampler(normal_x, labels, view.normal_family_index, 1, budget_x, cfg.meta, cfg.seed)

        pool_1x, ceiling = run_pool(cfg, scaler, labeler, view.budget_row_ids, args.episodes, args.rounds,
                                    ceiling_sampler)
        normal = roles.normal[0]
        ids = source.read_family(normal).row_ids  # the naive reader needs the training ids, as the pool does
        train_ids = ids[split_normal_positions(len(ids), normal, cfg.data, cfg.seed, False)[0]]
        naive = run_naive(source, normal, train_ids, scaler, labeler, budget_x, cfg.meta, cfg.seed,
                          args.naive_episodes)
        del ceiling_sampler, normal_x, labels

        # ---------------------------------------------------------------- 10x
        pool_big, make_big_s, big_rows = None, None, None
        if args.scale > 1:
            uri_big = f"s3://bench/synthetic-{args.scale}x"
            t0 = time.perf_counter()
            big = make_synthetic(uri_big, args.rows * args.scale, args.features, args.families, seed=args.seed,
                                 storage=storage)
            make_big_s, big_rows = time.perf_counter() - t0, big["rows"]
            # Same scaler and labeler (same distribution); budget pools drawn by the plan task from row ids.
            pool_big, _ = run_pool(experiment(uri_big, storage, args.families, args), scaler, labeler, None,
                                   args.episodes, args.rounds)
    finally:
        try:
            ray.shutdown()
        finally:
            server.stop()

    growth = pool_big["peak_rss_bytes"] / pool_1x["peak_rss_bytes"] if pool_big else None
    growth_uss = pool_big["peak_uss_bytes"] / pool_1x["peak_uss_bytes"] if pool_big else None
    results = {
        "benchmark": "sampler",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "ray_cpus": args.cpus, "python": platform.python_version(),
                    "pyarrow": pa.__version__, "platform": platform.platform()},
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "data": {"rows_1x": manifest["rows"], "rows_big": big_rows, "scale": args.scale, "features": args.features,
                 "families": len(manifest["families"]), "shards_1x": len(manifest["shards"]),
                 "storage": "SeaweedFS S3 on 127.0.0.1", "make_1x_seconds": make_1x_s, "make_big_seconds": make_big_s},
        "ceiling": ceiling,
        "pool_1x": pool_1x,
        "naive": naive,
        "pool_big": pool_big,
        "ratio_vs_ceiling": pool_1x["episodes_per_s"] / ceiling["episodes_per_s"],
        "ratio_vs_naive": pool_1x["episodes_per_s"] / naive["episodes_per_s"],
        "memory_growth_10x": growth,  # peak summed RSS of the actors, larger / 1x dataset
        "memory_growth_10x_uss": growth_uss,
        "targets": {"ratio_vs_ceiling": 0.5, "ratio_vs_naive": 10.0, "memory_growth_10x": 1.5},
    }
    mb = 1 / 2**20
    print(f"sampler benchmark: {manifest['rows']:,} rows x {args.features} features, {len(manifest['families'])} "
          f"families on SeaweedFS S3; {args.num_actors} actors, buffer {args.buffer_rows:,} rows; "
          f"{os.cpu_count()} CPUs")
    print(f"{'measurement':<46}{'episodes/s':>12}{'rows/s':>14}{'ratio':>8}{'CPU us/episode':>16}")
    for name, r, ratio in [
        ("in-memory EpisodeSampler (ceiling)", ceiling, 1.0),
        ("SamplerPool <- S3", pool_1x, results["ratio_vs_ceiling"]),
        ("naive: one shard read per episode <- S3", naive, naive["episodes_per_s"] / ceiling["episodes_per_s"]),
    ]:
        cpu = r.get("cpu_us_per_episode")
        print(f"{name:<46}{r['episodes_per_s']:>12,.1f}{r['rows_per_s']:>14,.0f}{ratio:>8.3f}"
              f"{cpu if cpu is None else format(cpu, ',.0f'):>16}")
    print(f"pool vs naive: {results['ratio_vs_naive']:.1f}x")
    print(f"peak memory of the actors at {manifest['rows']:,} rows: RSS {pool_1x['peak_rss_bytes'] * mb:,.0f} MiB, "
          f"USS {pool_1x['peak_uss_bytes'] * mb:,.0f} MiB")
    if pool_big:
        print(f"peak memory of the actors at {big_rows:,} rows: RSS {pool_big['peak_rss_bytes'] * mb:,.0f} MiB "
              f"(x{growth:.3f}), USS {pool_big['peak_uss_bytes'] * mb:,.0f} MiB (x{growth_uss:.3f}); "
              f"pool there {pool_big['episodes_per_s']:,.0f} episodes/s")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
