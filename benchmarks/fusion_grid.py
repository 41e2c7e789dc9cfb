"""Diagnostic of the fusion choice (issue 23): what every fusion candidate scores on the held-out
family, beside what the run's leave-one-meta-family-out (LOMO) choice saw of it.

For each (dataset, fold, seed) cell of the quality benchmark's protocol (same splits, scaler and
overrides: quality.py), metaad is fitted once with GRID as its fusion candidates; the held-out
family is then scored with each candidate's weights. Per candidate it reports the held-out AUROC /
AUPR and the LOMO AUROCs the choice rests on, and per fusion rule and candidate set the mean
held-out AUROC of the candidate that rule would pick from those LOMO AUROCs. The held-out figures
are a report, never an input to a choice: that would be tuning on held-out families.

    python benchmarks/fusion_grid.py --datasets nsl_kdd --seeds 3
    python benchmarks/fusion_grid.py --datasets nsl_kdd --seeds 3 --set model.background_features=deviation

Writes <out>/fusion_grid.json: under ``runs[<label>][<dataset>]`` the cells, the per-candidate
means (``candidates``) and the picks (``picks``), ``<label>`` being --label (default: the --set
overrides, or "defaults"); an existing file keeps its other entries. Also prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (beside this file; sets METAAD_DATASETS, puts the repository on sys.path)

# Network, kNN, isolation, reconstruction weights: the two default candidates, the network alone,
# and the one-class fusion with the network added at growing weight.
GRID = [[1, 0.5, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0], [0.25, 1, 1, 1], [0.5, 1, 1, 1], [1, 1, 1, 1], [2, 1, 1, 1]]
# Candidate sets whose choice is re-enacted from the cells' LOMO AUROCs (indices into GRID).
CANDIDATE_SETS = {"defaults [1,0.5,0,0] [0,1,1,1]": [0, 1], "+ [1,1,1,1]": [0, 1, 5], "[0,1,1,1] [1,1,1,1]": [1, 5]}
RULES = ("best_mean", "one_se")  # delong needs the cells' scores, which are not kept


def key(weights) -> str:
    return json.dumps(weights)


def run_cell(dataset: str, fold: str, seed: int, budget: int, data_root: str, extra: list[str]) -> dict:
    import torch

    from metaad_dist.cli import compose_config
    from metaad_dist.data import source as data_source
    from metaad_dist.data.views import build_test_view
    from metaad_dist.eval.metrics import detection_metrics
    from metaad_dist.train.local import train_local
    from metaad_dist.train.setup import prepare_training

    torch.set_num_threads(1)
    args = argparse.Namespace(data_root=data_root, scaler="quantile", quick=False, device=None, set=extra)
    families = quality.anomaly_families(compose_config(quality.dataset_overrides(dataset, data_root)))
    others = [f for f in families if f != fold]
    overrides = quality.cell_overrides(args, dataset, fold, others, seed, budget)
    cfg = compose_config(overrides + [f"model.fusion_candidates={json.dumps(GRID)}"])
    setup = prepare_training(cfg)
    test = build_test_view(data_source.open_source(cfg.data, cfg.storage), setup.roles, cfg.data, cfg.meta, cfg.seed)
    normal = torch.as_tensor(setup.scaler.transform(test.normal_x))
    held = torch.as_tensor(setup.scaler.transform(test.held_out_x[fold]))
    started = time.perf_counter()
    model = train_local(cfg, outer=True, setup=setup).trained.model.eval()
    fit_s = time.perf_counter() - started
    held_out = {}
    for weights in GRID:
        model.memory.set_weights(weights)
        with torch.no_grad():
            m = detection_metrics(model.anomaly_score(normal, cfg.model.score).numpy(),
                                  model.anomaly_score(held, cfg.model.score).numpy())
        held_out[key(weights)] = {"auroc": m["auroc"], "aupr": m["aupr"]}
    choice = model.memory.choice
    return {"dataset": dataset, "fold": fold, "seed": seed, "budget": budget, "fit_s": fit_s, "held_out": held_out,
            "lomo_families": choice.families, "lomo_auroc": {key(w): choice.aurocs[i].tolist() for i, w in enumerate(GRID)}}


def summarise(cells: list[dict]) -> dict:
    from metaad_dist.train.fusion import pick_candidate

    out = {}
    for dataset in sorted({c["dataset"] for c in cells}):
        mine = [c for c in cells if c["dataset"] == dataset]
        candidates = {key(w): {m: float(np.mean([c["held_out"][key(w)][m] for c in mine])) for m in ("auroc", "aupr")}
                      | {"lomo_auroc": float(np.mean([np.mean(c["lomo_auroc"][key(w)]) for c in mine]))} for w in GRID}
        picks = {}
        for name, idx in CANDIDATE_SETS.items():
            for rule in RULES:
                chosen = [pick_candidate([GRID[i] for i in idx], np.array([c["lomo_auroc"][key(GRID[i])] for i in idx]), rule)
                          for c in mine]
                picks[f"{name} / {rule}"] = {
                    "auroc": float(np.mean([c["held_out"][key(GRID[idx[j]])]["auroc"] for c, j in zip(mine, chosen)])),
                    "chosen": {key(GRID[i]): sum(1 for j in chosen if idx[j] == i) for i in idx},
                }
        out[dataset] = {"cells": len(mine), "candidates": candidates, "picks": picks}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(quality.DATASETS))
    p.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1")
    p.add_argument("--budget", type=int, default=10)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every cell")
    p.add_argument("--label", default=None, help="the key of this run in fusion_grid.json")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--data-root", default=str(quality.REPO / "prepared"))
    p.add_argument("--out", default=str(quality.REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    from metaad_dist.errors import UserError

    try:
        return run(args, argv)
    except UserError as exc:  # a bad --datasets or --set: one line, not a traceback
        print(f"fusion_grid: error: {exc}", file=sys.stderr)
        return 2


def run(args, argv) -> int:
    from metaad_dist.cli import compose_config
    from metaad_dist.errors import ConfigError

    known = quality.DATASETS + quality.BUILTIN_DATASETS
    for dataset in args.datasets:  # every setting checked before any cell trains
        if dataset not in known:
            raise ConfigError(f"--datasets {dataset}: expected one of {', '.join(known)}")
        compose_config(quality.dataset_overrides(dataset, args.data_root) + list(args.set))
    tasks = []
    for dataset in args.datasets:
        quality.ensure_prepared(dataset, args.data_root)
        for fold in quality.anomaly_families(compose_config(quality.dataset_overrides(dataset, args.data_root))):
            tasks += [(dataset, fold, seed, args.budget, args.data_root, list(args.set)) for seed in range(args.seeds)]
    started = time.perf_counter()
    if args.jobs <= 1:
        cells = [run_cell(*t) for t in tasks]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            cells = list(pool.map(run_cell, *zip(*tasks)))
    label = args.label or (" ".join(args.set) or "defaults")
    summary = summarise(cells)
    path = Path(args.out) / "fusion_grid.json"
    report = json.loads(path.read_text()) if path.is_file() else {"benchmark": "fusion_grid", "grid": GRID, "runs": {}}
    command = "python benchmarks/fusion_grid.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for dataset, entry in summary.items():  # one entry per (label, dataset): other datasets' entries stay
        report["runs"].setdefault(label, {})[dataset] = {
            "command": command, "commit": quality.git_commit(), "minutes": (time.perf_counter() - started) / 60,
            "budget": args.budget, "seeds": args.seeds, **entry, "cells": [c for c in cells if c["dataset"] == dataset],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    quality.write_json_atomic(path, report)
    for dataset, s in summary.items():
        print(f"\n{label}: {dataset}, {s['cells']} cells, mean held-out AUROC / AUPR (mean LOMO AUROC)")
        for weights, m in s["candidates"].items():
            print(f"  {weights:<22} {m['auroc']:.4f} / {m['aupr']:.4f}  ({m['lomo_auroc']:.4f})")
        for name, m in s["picks"].items():
            print(f"  pick {name:<44} {m['auroc']:.4f}  {m['chosen']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
