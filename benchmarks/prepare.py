"""Prepare throughput (docs/method.md section 8 style: side by side in one run, ratios).

Rows/s of `metaad prepare` (UNSW-NB15 config: 3 one-hot categoricals, 190 float32 features,
10 families) from one plain CSV into
  - a local folder, and
  - a real S3-compatible server on 127.0.0.1 (SeaweedFS, tests/s3_server.py),
against pyarrow.csv.read_csv of the same file (the ceiling: parse only, multithreaded, no
encoding, no writes), and the parallel path (data.source.parallel=ray: Ray tasks per CSV byte
range, on a warm local Ray instance) into a local folder; ceiling, serial and parallel are
interleaved, best of --repeats, and the parallel manifest's shards must equal the serial ones.
Also the read side: PreparedSource.read of every family, local and S3, against pyarrow.dataset
reading the same local shards, with the sha256 check of each shard against the manifest
(storage.verify_checksums, on by default; every repeat is a first open, so every shard is
hashed) and without it.

The input is the shared UNSW-NB15 CSV repeated --scale times (82,332 rows each).

    .venv/bin/python benchmarks/prepare.py [--scale 5] [--repeats 3]

Prints a table and writes benchmarks/results/prepare.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402

from metaad_dist.cli import compose_config  # noqa: E402
from metaad_dist.config import StorageConfig  # noqa: E402
from metaad_dist.data.prepare import prepare_dataset  # noqa: E402
from metaad_dist.data.manifest import forget_verified  # noqa: E402
from metaad_dist.data.prepared import PreparedSource  # noqa: E402
from s3_server import SeaweedS3  # noqa: E402

UNSW_ZIP = "unsw_nb15/UNSW_NB15_training-set.csv.zip"


def datasets_dir() -> Path:
    path = Path(os.environ.get("METAAD_DATASETS") or REPO.parent / "shared" / "datasets").resolve()
    if not (path / UNSW_ZIP).is_file():
        sys.exit(f"benchmarks/prepare.py: {path / UNSW_ZIP} not found; set METAAD_DATASETS")
    return path


def build_input(workdir: Path, scale: int) -> Path:
    """The UNSW-NB15 CSV (BOM stripped) repeated `scale` times, header once."""
    with zipfile.ZipFile(datasets_dir() / UNSW_ZIP) as archive:
        text = archive.read(archive.namelist()[0]).decode("utf-8-sig")
    header, body = text.split("\n", 1)
    body = body if body.endswith("\n") else body + "\n"
    path = workdir / f"unsw_x{scale}.csv"
    with open(path, "w") as f:
        f.write(header + "\n")
        for _ in range(scale):
            f.write(body)
    return path


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=5, help="times the 82,332-row UNSW-NB15 CSV is repeated")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per measurement")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "prepare.json"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="metaad-bench-prepare-"))
    server = None
    try:
        csv = build_input(workdir, args.scale)
        size = csv.stat().st_size
        cfg = compose_config(["data=unsw_nb15", f"data.source.train_files=[{csv}]", "data.source.overwrite=true",
                              "data.source.parallel=serial"])

        serial_cfg = compose_config(["data=unsw_nb15", f"data.source.train_files=[{csv}]", "data.source.overwrite=true",
                                     "data.source.parallel=serial"])
        parallel_cfg = compose_config(["data=unsw_nb15", f"data.source.train_files=[{csv}]",
                                       "data.source.overwrite=true", "data.source.parallel=ray"])
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        local_dir, parallel_dir = workdir / "local", workdir / "parallel"
        runs = {
            "ceiling": lambda: pacsv.read_csv(csv).num_rows,
            "local": lambda: prepare_dataset(serial_cfg.data, str(local_dir), StorageConfig()),
            "parallel": lambda: prepare_dataset(parallel_cfg.data, str(parallel_dir), StorageConfig()),
        }
        timings: dict[str, list[float]] = {name: [] for name in runs}
        results_of = {}
        for r in range(args.repeats + 1):  # round 0 warms Ray's workers and the page cache
            for name, fn in runs.items():
                started = time.perf_counter()
                results_of[name] = fn()
                if r:
                    timings[name].append(time.perf_counter() - started)
        ray.shutdown()
        ceiling_s, local_s, parallel_s = (min(timings[n]) for n in ("ceiling", "local", "parallel"))
        rows, manifest = results_of["ceiling"], results_of["local"]
        assert manifest["rows"] == rows, (manifest["rows"], rows)
        assert [x["sha256"] for x in results_of["parallel"]["shards"]] == [x["sha256"] for x in manifest["shards"]]

        server = SeaweedS3().start()
        os.environ.update(server.env())
        server.client().create_bucket(Bucket="bench")
        storage = StorageConfig(endpoint_url=server.endpoint_url)
        s3_uri = "s3://bench/unsw"
        s3_s, s3_manifest = best_of(args.repeats, lambda: prepare_dataset(cfg.data, s3_uri, storage))
        assert s3_manifest["rows"] == rows

        shard_paths = [str(local_dir / manifest["shard_root"] / s["path"]) for s in manifest["shards"]]
        read_ceiling_s, _ = best_of(args.repeats, lambda: pads.dataset(shard_paths, format="parquet").to_table())
        families = sorted(manifest["families"])
        def first_read(uri: str, storage: StorageConfig):
            forget_verified()  # as a fresh process: each shard is hashed when opened
            return PreparedSource(uri, storage).read(families)

        trusted = StorageConfig(endpoint_url=server.endpoint_url, verify_checksums=False)
        read_local_s, _ = best_of(args.repeats, lambda: first_read(str(local_dir), StorageConfig()))
        read_local_trusted_s, _ = best_of(args.repeats, lambda: first_read(str(local_dir), trusted))
        read_s3_s, _ = best_of(args.repeats, lambda: first_read(s3_uri, storage))
        read_s3_trusted_s, _ = best_of(args.repeats, lambda: first_read(s3_uri, trusted))
        shard_bytes = sum(s["bytes"] for s in manifest["shards"])
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def rate(seconds: float) -> float:
        return rows / seconds

    results = {
        "benchmark": "prepare",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0], "python": platform.python_version(), "pyarrow": pa.__version__,
                    "platform": platform.platform()},
        "input": {"dataset": "unsw_nb15", "scale": args.scale, "rows": rows, "csv_bytes": size,
                  "features": len(manifest["features"]), "families": len(families),
                  "shards": len(manifest["shards"]), "shard_bytes": shard_bytes,
                  "compression": manifest["compression"]},
        "repeats": args.repeats,
        "prepare": {
            "pyarrow_csv_read_rows_per_s": rate(ceiling_s),
            "local_rows_per_s": rate(local_s),
            "parallel_rows_per_s": rate(parallel_s),
            "s3_rows_per_s": rate(s3_s),
            "parallel_vs_single": local_s / parallel_s,
            "parallel_vs_ceiling": ceiling_s / parallel_s,
            "local_vs_ceiling": ceiling_s / local_s,
            "s3_vs_ceiling": ceiling_s / s3_s,
            "seconds": {"pyarrow_csv_read": ceiling_s, "local": local_s, "parallel": parallel_s, "s3": s3_s},
        },
        "read": {
            "pyarrow_dataset_local_rows_per_s": rate(read_ceiling_s),
            "local_rows_per_s": rate(read_local_s),
            "s3_rows_per_s": rate(read_s3_s),
            "local_no_checksum_rows_per_s": rate(read_local_trusted_s),
            "s3_no_checksum_rows_per_s": rate(read_s3_trusted_s),
            "local_vs_ceiling": read_ceiling_s / read_local_s,
            "s3_vs_ceiling": read_ceiling_s / read_s3_s,
            # What the sha256 check costs: read time with it over read time without it.
            "checksum_cost_local": read_local_s / read_local_trusted_s,
            "checksum_cost_s3": read_s3_s / read_s3_trusted_s,
            "seconds": {"pyarrow_dataset_local": read_ceiling_s, "local": read_local_s, "s3": read_s3_s,
                        "local_no_checksum": read_local_trusted_s, "s3_no_checksum": read_s3_trusted_s},
        },
    }
    print(f"prepare benchmark: UNSW-NB15 x{args.scale} = {rows:,} rows, {size / 1e6:.0f} MB CSV, "
          f"{len(manifest['features'])} features, best of {args.repeats}, {os.cpu_count()} CPUs")
    print(f"{'measurement':<44}{'rows/s':>14}{'seconds':>10}{'ratio':>8}")
    lines = [
        ("pyarrow.csv.read_csv (ceiling)", ceiling_s, 1.0),
        ("metaad prepare -> local folder", local_s, ceiling_s / local_s),
        ("metaad prepare, Ray tasks -> local folder", parallel_s, ceiling_s / parallel_s),
        ("metaad prepare -> S3 (SeaweedFS, 127.0.0.1)", s3_s, ceiling_s / s3_s),
        ("pyarrow.dataset read of the shards (ceiling)", read_ceiling_s, 1.0),
        ("PreparedSource.read <- local folder", read_local_s, read_ceiling_s / read_local_s),
        ("  same, storage.verify_checksums=false", read_local_trusted_s, read_ceiling_s / read_local_trusted_s),
        ("PreparedSource.read <- S3", read_s3_s, read_ceiling_s / read_s3_s),
        ("  same, storage.verify_checksums=false", read_s3_trusted_s, read_ceiling_s / read_s3_trusted_s),
    ]
    for name, seconds, ratio in lines:
        print(f"{name:<44}{rows / seconds:>14,.0f}{seconds:>10.2f}{ratio:>8.2f}")
    print(f"sha256 check cost (read time with / without): local {read_local_s / read_local_trusted_s:.2f}x, "
          f"S3 {read_s3_s / read_s3_trusted_s:.2f}x")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
