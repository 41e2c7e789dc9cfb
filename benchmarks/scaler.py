"""Applying the fitted quantile scaler: data/scaling.py against scikit-learn's own transform.

Every scored row and every row the streaming sampler reads goes through the run's scaler, so its
speed is a floor under scoring and out-of-core training. For each dataset the scaler is fitted
on --fit-rows rows, then --rows rows (the dataset's rows tiled) are transformed by
FeatureScaler.transform and by QuantileTransformer.transform (+ nan_to_num, float32: what
FeatureScaler returns), interleaved, --repeats times each, one thread; the outputs must be
identical bit for bit. Datasets: prepared UNSW-NB15 and NSL-KDD (one-hot and count columns:
few distinct values over 1000 tied quantiles) from --data-root, prepared first if missing, and
digits with Gaussian noise (continuous columns).

    .venv/bin/python benchmarks/scaler.py --data-root <prepared> [--rows 250000] [--repeats 3]

Prints a table and writes benchmarks/results/scaler.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402


def prepared_features(root: str, dataset: str) -> np.ndarray:
    import pyarrow.dataset as pads

    from quality import ensure_prepared

    ensure_prepared(dataset, root)
    folder = os.path.join(root, dataset)
    features = [f["name"] for f in json.loads(Path(folder, "manifest.json").read_text())["features"]]
    table = pads.dataset(folder, format="parquet", exclude_invalid_files=True).to_table(columns=features)
    return np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in features]).astype(np.float32)


def noisy_digits(rows: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    base = load_digits().data.astype(np.float32)
    rng = np.random.default_rng(0)
    return base[rng.integers(0, len(base), rows)] + rng.normal(scale=0.5, size=(rows, 64)).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder of prepared datasets (prepared here if missing)")
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--fit-rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "scaler.json"))
    args = parser.parse_args()

    import torch
    from sklearn.preprocessing import QuantileTransformer

    from metaad_dist.data.scaling import QUANTILES, FeatureScaler
    from quality import write_json_atomic

    torch.set_num_threads(1)
    data = {name: prepared_features(args.data_root, name) for name in ("unsw_nb15", "nsl_kdd")}
    data["digits_noise"] = noisy_digits(args.rows)
    results = {}
    for name, x in data.items():
        rows = np.resize(x, (args.rows, x.shape[1]))  # tiled to --rows
        fit = x[: args.fit_rows]
        ours = FeatureScaler("quantile", seed=0).fit(fit)
        theirs = QuantileTransformer(n_quantiles=min(QUANTILES, len(fit)), output_distribution="normal",
                                     subsample=len(fit), random_state=0).fit(fit)
        runs = {"metaad": lambda: ours.transform(rows),
                "sklearn": lambda: np.nan_to_num(theirs.transform(rows), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)}
        seconds = {k: [] for k in runs}
        outputs = {}
        for _ in range(args.repeats):
            for key, fn in runs.items():
                started = time.perf_counter()
                outputs[key] = fn()
                seconds[key].append(time.perf_counter() - started)
        assert np.array_equal(outputs["metaad"], outputs["sklearn"]), f"{name}: transforms differ"
        results[name] = {"features": x.shape[1], "seconds": seconds,
                         "rows_per_s": {k: args.rows / min(v) for k, v in seconds.items()},
                         "speedup": min(seconds["sklearn"]) / min(seconds["metaad"]), "identical": True}

    out = {"benchmark": "scaler", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average_1m": os.getloadavg()[0]},
           "rows": args.rows, "fit_rows": args.fit_rows, "repeats": args.repeats, "threads": 1, "datasets": results}
    print(f"quantile scaler, {args.rows:,} rows, best of {args.repeats}, 1 thread, load {os.getloadavg()[0]:.1f}")
    print(f"{'dataset':<16}{'features':>9}{'metaad rows/s':>15}{'sklearn rows/s':>16}{'speed-up':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['features']:>9}{r['rows_per_s']['metaad']:>15,.0f}{r['rows_per_s']['sklearn']:>16,.0f}"
              f"{r['speedup']:>10.2f}")
    write_json_atomic(Path(args.output), out)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
