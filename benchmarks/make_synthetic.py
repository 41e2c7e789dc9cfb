"""A large synthetic dataset for scale tests, written through `metaad prepare` (issue 4).

    python benchmarks/make_synthetic.py --rows 2000000 --features 32 --families 20 --output /tmp/synth
    python benchmarks/make_synthetic.py --rows 2000000 --output s3://bucket/synth --endpoint-url http://127.0.0.1:8333

Rows are drawn in chunks (so memory stays at one chunk whatever --rows is), written as raw
Parquet files into a temporary folder, then prepared into family-partitioned shards with a
manifest, exactly as any user table. Family "normal" holds --normal-fraction of the rows;
anomaly families "a00", "a01", ... share the rest with Zipf-like sizes, and the families'
rows are interleaved as in real captures. Features: a per-family Gaussian (means shifted by
family), float32. S3 credentials come from the environment (AWS_ACCESS_KEY_ID, ...).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metaad_dist.config import DataConfig, SourceConfig, StorageConfig  # noqa: E402
from metaad_dist.data.prepare import prepare_dataset  # noqa: E402

NORMAL = "normal"


def family_names(families: int) -> list[str]:
    return [NORMAL] + [f"a{k:02d}" for k in range(families)]


def family_shares(families: int, normal_fraction: float) -> np.ndarray:
    zipf = 1.0 / np.arange(1, families + 1)
    return np.concatenate([[normal_fraction], (1.0 - normal_fraction) * zipf / zipf.sum()])


def write_raw(folder: Path, rows: int, features: int, families: int, normal_fraction: float, seed: int,
              chunk_rows: int) -> list[str]:
    """Raw Parquet input files of `rows` rows: f0..f{d-1} (float32) and `family`."""
    names = family_names(families)
    shares = family_shares(families, normal_fraction)
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=1.5, size=(len(names), features)).astype(np.float32)
    means[0] = 0.0
    scales = rng.uniform(0.5, 1.5, size=(len(names), 1)).astype(np.float32)
    scales[0] = 1.0
    files = []
    for part, start in enumerate(range(0, rows, chunk_rows)):
        n = min(chunk_rows, rows - start)
        fam = rng.choice(len(names), size=n, p=shares)
        x = rng.standard_normal(size=(n, features), dtype=np.float32) * scales[fam] + means[fam]
        columns = {f"f{j}": pa.array(x[:, j]) for j in range(features)}
        columns["family"] = pa.DictionaryArray.from_arrays(pa.array(fam.astype(np.int32)), pa.array(names))
        path = folder / f"raw-{part:05d}.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=min(n, 262144), compression="none")
        files.append(str(path))
    return files


def make_synthetic(
    output: str,
    rows: int = 2_000_000,
    features: int = 32,
    families: int = 20,
    normal_fraction: float = 0.6,
    seed: int = 0,
    storage: Optional[StorageConfig] = None,
    row_group_size: int = 65536,
    rows_per_shard: int = 1_000_000,
    chunk_rows: int = 1_000_000,
    overwrite: bool = False,
    workdir: Optional[str] = None,
) -> dict:
    """Write the dataset to `output` (folder or s3://bucket/prefix) and return its manifest."""
    tmp = Path(tempfile.mkdtemp(prefix="metaad-synth-", dir=workdir))
    try:
        files = write_raw(tmp, rows, features, families, normal_fraction, seed, chunk_rows)
        names = family_names(families)
        data = DataConfig(
            name="synthetic",
            path=output,
            source=SourceConfig(train_files=files, format="parquet", family_column="family",
                                row_group_size=row_group_size, rows_per_shard=rows_per_shard, overwrite=overwrite),
            normal=[NORMAL],
            meta=names[1:-1],
            held_out=names[-1:],
        )
        return prepare_dataset(data, output, storage or StorageConfig())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--families", type=int, default=20, help="anomaly families (besides 'normal')")
    p.add_argument("--normal-fraction", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--row-group-size", type=int, default=65536)
    p.add_argument("--rows-per-shard", type=int, default=1_000_000)
    p.add_argument("--chunk-rows", type=int, default=1_000_000)
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (credentials from the environment)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    started = time.perf_counter()
    manifest = make_synthetic(
        args.output, args.rows, args.features, args.families, args.normal_fraction, args.seed,
        StorageConfig(endpoint_url=args.endpoint_url), args.row_group_size, args.rows_per_shard, args.chunk_rows,
        args.overwrite,
    )
    print(json.dumps({
        "output": args.output, "rows": manifest["rows"], "features": len(manifest["features"]),
        "families": {f: e["rows"] for f, e in manifest["families"].items()}, "shards": len(manifest["shards"]),
        "bytes": sum(s["bytes"] for s in manifest["shards"]), "seconds": round(time.perf_counter() - started, 1),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
