"""Benchmark of record: leave-one-family-out quality of the method and every baseline.

For each dataset, each anomaly family h is held out in turn (``data.held_out=[h]``, every other
anomaly family is a ``meta`` family, no validation family); for each seed and each anomaly-shot
budget B (labelled rows per meta family) one :func:`prepare_training` builds the split, the
budget pools and the scaler, and every method trains on exactly that setup and is scored on the
same test view (test normal rows + all test rows of h). docs/method.md section 7, ANCHORS.md.

    python benchmarks/quality.py                                  # the full grid (long)
    python benchmarks/quality.py --datasets nsl_kdd --seeds 3 --budgets 10 --scaler quantile
    python benchmarks/quality.py --quick --datasets digits        # smoke run (seconds)

Results are cached per (dataset, fold, seed, budget, method) under --cache, so an interrupted
run continues where it stopped; ``--rerun metaad`` recomputes one method (e.g. after the method
changed). Writes <out>/quality.md and <out>/quality.json (``summary[dataset][budget][method] =
{"auroc", "aupr", "fit_s"}``, means over folds of the per-fold means over seeds, and fit seconds per
cell; ``fusion_weights[dataset]``, how often the method chose each fusion candidate) and prints a
table. ``--merge <earlier quality.json>`` carries over that report's entries this run has no cells
for (marked as such), so a run of a few methods extends the benchmark of record.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The dataset configs find raw files under $METAAD_DATASETS (default ../shared/datasets relative
# to the working directory); make that independent of where the benchmark is started.
os.environ.setdefault("METAAD_DATASETS", str(REPO.parent / "shared" / "datasets"))

from metaad_dist.cli import compose_config  # noqa: E402
from metaad_dist.data import source as data_source  # noqa: E402
from metaad_dist.data.views import build_test_view  # noqa: E402
from metaad_dist.errors import ConfigError, UserError  # noqa: E402
from metaad_dist.eval.baselines import BASELINES, fit_baseline  # noqa: E402
from metaad_dist.eval.metrics import detection_metrics  # noqa: E402
from metaad_dist.train.setup import fusion_candidates, prepare_training  # noqa: E402
from quality_targets import check_targets, targets_markdown  # noqa: E402  (beside this file)

METHOD = "metaad"
# Ablations read off another method's fit, with no training of their own: each is scored by that
# same fitted model with one setting switched, so it costs nothing and differs from it in that
# setting only. oneclass_only: metaad's normal memory with the fusion forced to the one-class
# candidate (network weight 0), i.e. what the network's evidence adds to the fused score.
DERIVED = {"oneclass_only": METHOD}
ALL_METHODS = [METHOD, *DERIVED, *BASELINES]
DATASETS = ("unsw_nb15", "nsl_kdd", "tep")
BUILTIN_DATASETS = ("digits",)  # no prepare step; for smoke runs
# A mean over some folds reported beside the mean over all: (key in `overall`, column label, folds kept).
# UNSW-NB15: folds whose rows rarely occur verbatim under another label (docs/method.md section 7).
# TEP: faults 3, 9 and 15 are widely reported to be indistinguishable from normal operation.
FOLD_SUBSETS = {
    "unsw_nb15": ("low_duplicate", "low-dup folds", lambda fold: fold in {"Generic", "Shellcode", "Worms", "Reconnaissance"}),
    "tep": ("without_3_9_15", "without faults 3, 9, 15", lambda fold: fold not in {"fault3", "fault9", "fault15"}),
}
SUBSET_NOTES = {
    "unsw_nb15": "Low-dup folds (Generic, Shellcode, Worms, Reconnaissance): under 10% of their rows also occur under another label.",
    "tep": "Faults 3, 9 and 15 are widely reported to be indistinguishable from normal operation; the second mean leaves them out.",
}
# Settings a dataset needs to run at all, fixed before any result: TEP has 400 training normal rows
# (d00.dat less the validation fifth), fewer than the default 256 support + 256 query per episode.
DATASET_OVERRIDES = {"tep": ["meta.n_support=128", "meta.n_query=128"]}
SCALERS = ("standard", "quantile")
# A tiny configuration for smoke tests: every code path, seconds instead of hours.
QUICK_OVERRIDES = [
    "meta.episodes=10",
    "meta.n_support=32",
    "meta.n_query=32",
    "eval.net_epochs=1",
    "eval.net_max_steps_per_epoch=10",
    "eval.isolation_forest_estimators=10",
    "eval.prenet_score_pairs=4",
    "trainer.validate_every=10",
]
METRICS = ("auroc", "aupr", "fpr95")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), help=f"of {DATASETS + BUILTIN_DATASETS}")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds: 0 .. N-1 (default 5)")
    p.add_argument("--budgets", nargs="+", type=int, default=[5, 10, 50], help="labelled rows per meta family")
    p.add_argument("--methods", nargs="+", default=ALL_METHODS, help=f"of {ALL_METHODS}")
    p.add_argument(
        "--scaler", default="quantile", help=f"one of {SCALERS}, fitted on training normal rows (default: quantile, "
        "as configs/data/unsw_nb15.yaml and nsl_kdd.yaml)",
    )
    p.add_argument("--folds", nargs="+", default=None, help="held-out families to run (default: every anomaly family)")
    p.add_argument("--quick", action="store_true", help="tiny training config: a smoke run, not a result")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides for every cell")
    p.add_argument("--device", default=None, help="trainer.device for the method and the neural baselines")
    # One thread: these networks are small, and on shared cores more threads spin-wait (measured
    # here: 150 ms instead of 1 ms per step with a second busy process on a 2-core machine).
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel, one process each (default 1)")
    p.add_argument("--rerun", nargs="*", default=[], help="methods to recompute even when cached")
    p.add_argument(
        "--cached-only", action="store_true",
        help="compute nothing: report the cells already in the cache (e.g. to merge runs over different budgets)",
    )
    p.add_argument(
        "--merge", default=None, metavar="QUALITY_JSON",
        help="an earlier quality.json: its (dataset, budget, method) entries this run has no cells for are carried over",
    )
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for quality.md / quality.json")
    p.add_argument("--cache", default=str(REPO / "runs" / "benchmarks" / "quality"), help="per-cell results cache")
    p.add_argument("--data-root", default=str(REPO / "prepared"), help="prepared datasets (metaad prepare output)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    for d in args.datasets:
        if d not in DATASETS + BUILTIN_DATASETS:
            raise ConfigError(f"--datasets: unknown dataset '{d}'; expected some of {list(DATASETS + BUILTIN_DATASETS)}")
    for m in args.methods + args.rerun:
        if m not in ALL_METHODS:
            raise ConfigError(f"--methods/--rerun: unknown method '{m}'; expected some of {ALL_METHODS}")
    if args.scaler not in SCALERS:
        raise ConfigError(f"--scaler='{args.scaler}'; expected one of {list(SCALERS)}")
    if args.merge and not os.path.isfile(args.merge):
        raise ConfigError(f"--merge {args.merge}: no such file; expected an earlier quality.json")
    if args.seeds < 1 or args.jobs < 1 or any(b < 1 for b in args.budgets):
        raise ConfigError("--seeds, --jobs and --budgets must be positive integers")


def _quote(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def family_list(names) -> str:
    return "[" + ",".join(_quote(n) for n in names) + "]"


def dataset_overrides(dataset: str, data_root: str) -> list[str]:
    if dataset in BUILTIN_DATASETS:
        return [f"data={dataset}"]
    return [f"data={dataset}", f"data.path={os.path.join(data_root, dataset)}", *DATASET_OVERRIDES.get(dataset, [])]


def ensure_prepared(dataset: str, data_root: str, log=print) -> None:
    """Run `metaad prepare` for `dataset` into <data_root>/<dataset> unless a manifest is there."""
    if dataset in BUILTIN_DATASETS:
        return
    dest = os.path.join(data_root, dataset)
    if os.path.isfile(os.path.join(dest, "manifest.json")):
        return
    from metaad_dist.data.prepare import prepare_command

    log(f"preparing {dataset} into {dest} ...")
    prepare_command(compose_config([f"data={dataset}", f"output={dest}", "quiet=true"]))


def anomaly_families(base_cfg) -> list[str]:
    source = data_source.open_source(base_cfg.data, base_cfg.storage)
    normal = {str(f) for f in base_cfg.data.normal}
    return [str(f) for f in source.family_names() if str(f) not in normal]


def cell_overrides(args, dataset: str, fold: str, others: list[str], seed: int, budget: int) -> list[str]:
    out = dataset_overrides(dataset, args.data_root) + [
        f"data.held_out={family_list([fold])}",
        f"data.meta={family_list(others)}",
        "data.validation=[]",
        f"data.scaler={args.scaler}",
        f"meta.budget={budget}",
        f"seed={seed}",
        "quiet=true",
    ]
    if args.quick:
        out += QUICK_OVERRIDES
    if args.device:
        out.append(f"trainer.device={args.device}")
    return out + list(args.set)


def cache_tag(args) -> str:
    """Cells computed under different settings never share a cache entry."""
    extra = list(args.set) + (QUICK_OVERRIDES if args.quick else [])
    tag = args.scaler + ("-quick" if args.quick else "")
    if args.set:
        tag += "-" + hashlib.sha1("\n".join(extra).encode()).hexdigest()[:10]
    return tag


# Settings of the method's normal memory and fusion choice (model.memory_*, model.fusion_*), what
# its background logit reads (model.background_features) and the order of its two updates
# (meta.update_order; inner_only, without an outer step, trains the same either way): no baseline
# reads them (metaad_dist/eval/baselines imports none of them), so changing one of them keeps the
# baselines' cached cells.
METHOD_ONLY_SETTINGS = {"model": ("memory_", "fusion_", "background_features"), "meta": ("update_order", "synthetic_")}


# Settings added later, at the value every earlier cell was trained with.
IMPLICIT_SETTINGS = {("model", "background_features"): "row", ("meta", "update_order"): "sequential",
                     ("meta", "synthetic_shots"): 0, ("meta", "synthetic_fraction"): 0.25,
                     ("meta", "synthetic_scale"): [1.0, 3.0]}


def cell_fingerprint(cfg, method: str = METHOD) -> str:
    """The cell's resolved config (defaults from configs/ included), so that a cached cell is
    reused only while `method` would be trained the same way; the dataset's location is left out
    (dataset_fingerprint covers its content) and so is output verbosity."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("quiet", None)
    settings["data"].pop("path", None)
    # Left out at their earlier value, so the cells computed before they existed still match.
    for (section, key), earlier in IMPLICIT_SETTINGS.items():
        if settings[section].get(key) == earlier:
            settings[section].pop(key)
    if method != METHOD and method not in DERIVED:
        for section, prefixes in METHOD_ONLY_SETTINGS.items():
            settings[section] = {k: v for k, v in settings[section].items() if not k.startswith(prefixes)}
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def dataset_fingerprint(dataset: str, data_root: str) -> str:
    """The prepared dataset's identity: a re-prepared (re-encoded) dataset never reuses old cells."""
    if dataset in BUILTIN_DATASETS:
        return dataset
    manifest = json.loads((Path(data_root) / dataset / "manifest.json").read_text())
    # What the rows are (features, categories, families, counts, normal-row statistics), not how the
    # shards happen to be laid out: re-preparing the same raw files keeps the fingerprint.
    keys = ("features", "categorical_encoding", "categories", "families", "rows", "normalization")
    content = {k: manifest.get(k) for k in keys}
    return f"{dataset}-{hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]}"


def cache_path(args, dataset: str, fold: str, seed: int, budget: int, method: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in fold)
    return (
        Path(args.cache) / cache_tag(args) / dataset_fingerprint(dataset, args.data_root) / safe
        / f"seed{seed}-budget{budget}-{method}.json"
    )


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    except OSError:
        out = ""
    return out.strip() or "unknown"


def fit_method(name: str, cfg, setup):
    """A scorer for `name` trained on `setup`: the method itself or a baseline."""
    if name != METHOD:
        return fit_baseline(name, cfg, setup)
    import torch

    from metaad_dist.train.local import train_local

    model = train_local(cfg, outer=True, setup=setup).trained.model.eval()

    def score(x):
        return model.anomaly_score(torch.as_tensor(x), cfg.model.score).numpy()

    score.model = model  # for the ablations derived from this fit (DERIVED)
    score.fusion_weights = model.memory.weights.tolist() if model.memory is not None else None  # the run's choice
    choice = model.memory.choice if model.memory is not None else None
    if choice is not None:  # what it was chosen from: AUROC per candidate and held-out meta family
        score.fusion_choice = {"families": choice.families, "candidates": choice.candidates,
                               "aurocs": choice.aurocs.round(5).tolist()}
    return score


def one_class_weights(cfg, model) -> list[float]:
    """The one-class fusion candidate (the first with network weight 0); without one among
    model.fusion_candidates, the run's chosen weights with the network's set to 0."""
    one_class = [c for c in fusion_candidates(cfg.model) or [] if c[0] == 0]
    weights = one_class[0] if one_class else [0.0, *model.memory.weights.tolist()[1:]]
    if sum(weights) <= 0:
        raise ConfigError(f"oneclass_only: fusion weights {weights} without the network give no evidence")
    return list(weights)


def derive_method(name: str, cfg, parent):
    """A scorer for the ablation `name` (DERIVED) from its parent method's fitted scorer."""
    import torch

    model = parent.model
    if model.memory is None:
        raise ConfigError(f"{name} needs metaad's normal memory (model.memory_rows > 0)")
    weights = one_class_weights(cfg, model)

    def score(x):
        """Re-score with the one-class weights, then restore the run's own."""
        kept = model.memory.weights.clone()
        model.memory.set_weights(weights)
        try:
            return model.anomaly_score(torch.as_tensor(x), cfg.model.score).numpy()
        finally:
            model.memory.weights.copy_(kept)

    score.fusion_weights = weights
    return score


def run_cell(args, dataset: str, fold: str, others: list[str], seed: int, budget: int, methods: list[str], log) -> list[dict]:
    cfg = compose_config(cell_overrides(args, dataset, fold, others, seed, budget))
    setup = prepare_training(cfg)
    test = build_test_view(data_source.open_source(cfg.data, cfg.storage), setup.roles, cfg.data, cfg.meta, cfg.seed)
    normal_x = setup.scaler.transform(test.normal_x)
    held_x = setup.scaler.transform(test.held_out_x[fold])
    records = []
    scorers, fit_seconds = {}, {}
    for method in methods:
        start = time.perf_counter()
        if method in DERIVED:  # no training: its parent's fit (run_grid puts the parent first)
            scorer = derive_method(method, cfg, scorers[DERIVED[method]])
            fit_seconds[method] = fit_seconds[DERIVED[method]]
        else:
            scorer = scorers[method] = fit_method(method, cfg, setup)
            fit_seconds[method] = time.perf_counter() - start
        fitted = time.perf_counter()
        metrics = detection_metrics(scorer(normal_x), scorer(held_x))
        record = {
            "dataset": dataset, "fold": fold, "seed": seed, "budget": budget, "method": method,
            "scaler": args.scaler, "quick": args.quick, "overrides": list(args.set),
            **{k: metrics[k] for k in METRICS}, "n_normal": metrics["n_normal"], "n_anomaly": metrics["n_anomaly"],
            "fit_seconds": fit_seconds[method], "score_seconds": time.perf_counter() - fitted, "commit": git_commit(),
            "config_sha": cell_fingerprint(cfg, method),
        }
        for key in ("fusion_weights", "fusion_choice"):
            if hasattr(scorer, key):
                record[key] = getattr(scorer, key)
        write_json_atomic(cache_path(args, dataset, fold, seed, budget, method), record)
        records.append(record)
        log(
            f"    {dataset} {fold} seed {seed} budget {budget}: {method:<16} AUROC {record['auroc']:.3f}  "
            f"AUPR {record['aupr']:.3f}  ({record['fit_seconds']:.1f}s)"
        )
    return records


def _run_task(args, task) -> list[dict]:
    """One cell in a worker process (``--jobs`` > 1)."""
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    return run_cell(args, *task, log=print)


def run_grid(args, log=print) -> tuple[list[dict], dict]:
    """Compute (or load from cache) every requested cell; returns records and the fold lists."""
    records, folds_by_dataset, tasks, stale = [], {}, [], []
    seeds = list(range(args.seeds))
    for dataset in args.datasets:
        ensure_prepared(dataset, args.data_root, log)
        base = compose_config(dataset_overrides(dataset, args.data_root))
        families = anomaly_families(base)
        folds = [f for f in families if f in args.folds] if args.folds else families
        if not folds:
            raise ConfigError(f"--folds {args.folds}: none is an anomaly family of {dataset} ({families})")
        folds_by_dataset[dataset] = folds
        for budget in args.budgets:
            for seed in seeds:
                for fold in folds:
                    todo, cached = [], {}
                    others = [f for f in families if f != fold]
                    cfg = compose_config(cell_overrides(args, dataset, fold, others, seed, budget))
                    for method in args.methods:
                        current = cell_fingerprint(cfg, method)
                        path = cache_path(args, dataset, fold, seed, budget, method)
                        record = json.loads(path.read_text()) if path.is_file() and method not in args.rerun else None
                        # Cells written before fingerprints carry none: kept, and counted in the report.
                        if record is not None and record.get("config_sha", current) != current:
                            stale.append(f"{dataset}/{fold}/seed{seed}/budget{budget}/{method}")
                            record = None
                        if record is None:
                            todo.append(method)
                        else:
                            cached[method] = record
                    for derived, parent in DERIVED.items():
                        # An ablation needs its parent's fit, and a refitted parent its ablations
                        # again (they must come from the same fit): both or neither are computed.
                        # --cached-only computes nothing, so it reports whichever of them is cached.
                        if not args.cached_only and derived in args.methods and (derived in todo) != (parent in todo):
                            todo += [m for m in (parent, derived) if m not in todo]
                            cached.pop(parent, None), cached.pop(derived, None)
                    todo.sort(key=ALL_METHODS.index)
                    records += cached.values()
                    if todo and not args.cached_only:
                        tasks.append((dataset, fold, others, seed, budget, todo))
    cells = sum(len(f) for f in folds_by_dataset.values()) * len(seeds) * len(args.budgets)
    if stale:
        log(f"{len(stale)} cached (cell, method) results were computed under another config (first: {stale[0]}): "
            + ("left out" if args.cached_only else "recomputed"))
    if args.cached_only:
        log(f"--cached-only: {len(records)} cached (cell, method) results reported, nothing computed")
    log(f"{cells} cells, {cells - len(tasks)} complete in the cache, {len(tasks)} to run"
        + (f" on {args.jobs} processes" if args.jobs > 1 and tasks else ""))
    if args.jobs <= 1:
        for i, task in enumerate(tasks, 1):
            dataset, fold, _, seed, budget, todo = task
            log(f"[{i}/{len(tasks)}] {dataset} fold {fold} seed {seed} budget {budget}: {', '.join(todo)}")
            records += run_cell(args, *task, log=log)
        return records, folds_by_dataset
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a clean interpreter per worker (forking a process that already ran torch can hang).
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_task, args, task): task for task in tasks}
        for i, future in enumerate(as_completed(futures), 1):
            dataset, fold, _, seed, budget, _ = futures[future]
            records += future.result()
            log(f"[{i}/{len(tasks)}] done: {dataset} fold {fold} seed {seed} budget {budget}")
    return records, folds_by_dataset


# ---------------------------------------------------------------- aggregation and reports
def aggregate(records: list[dict], folds_by_dataset: dict, methods: list[str], budgets: list[int]) -> dict:
    """per_fold[d][b][m][fold] = {metric: mean, metric_std: std over seeds, seeds: n};
    overall[d][b][m] = mean over folds of per-fold means, std over seeds of fold-averaged values."""
    index: dict = {}
    for r in records:
        index.setdefault((r["dataset"], str(r["budget"]), r["method"], r["fold"]), {})[r["seed"]] = r
    per_fold: dict = {}
    overall: dict = {}
    for dataset, folds in folds_by_dataset.items():
        for budget in map(str, budgets):
            for method in methods:
                rows = {f: index.get((dataset, budget, method, f), {}) for f in folds}
                pf = {}
                for fold, by_seed in rows.items():
                    if not by_seed:
                        continue
                    entry = {"seeds": len(by_seed)}
                    for k in METRICS:
                        vals = np.array([r[k] for r in by_seed.values()])
                        entry[k], entry[f"{k}_std"] = float(vals.mean()), float(vals.std())
                    entry["fit_seconds"] = float(np.mean([r["fit_seconds"] for r in by_seed.values()]))
                    pf[fold] = entry
                if not pf:
                    continue
                per_fold.setdefault(dataset, {}).setdefault(budget, {})[method] = pf
                overall.setdefault(dataset, {}).setdefault(budget, {})[method] = _fold_mean(rows, folds)
                if dataset in FOLD_SUBSETS:
                    key, _, keep = FOLD_SUBSETS[dataset]
                    overall[dataset][budget][method][key] = _fold_mean(rows, [f for f in folds if keep(f)])
    return {"per_fold": per_fold, "overall": overall}


def _fold_mean(rows: dict, folds: list[str]) -> dict:
    """Mean over folds of per-fold seed means; std over seeds of the fold-averaged metric."""
    have = [f for f in folds if rows.get(f)]
    out: dict = {"folds": len(have), "of_folds": len(folds), "complete": len(have) == len(folds) and bool(folds)}
    if not have:
        return out
    out["seeds"] = len(set.intersection(*(set(rows[f]) for f in have)))
    for k in METRICS:
        out[k] = float(np.mean([np.mean([r[k] for r in rows[f].values()]) for f in have]))
        common = set.intersection(*(set(rows[f]) for f in have))
        per_seed = [np.mean([rows[f][s][k] for f in have]) for s in sorted(common)]
        out[f"{k}_std"] = float(np.std(per_seed)) if per_seed else float("nan")
    out["fit_seconds_per_cell"] = float(np.mean([r["fit_seconds"] for f in have for r in rows[f].values()]))
    return out


def summary_of(agg: dict) -> dict:
    """summary[dataset][budget][method] = {auroc, aupr, fit_s}: fit_s = mean training seconds per cell."""
    return {
        d: {
            b: {m: {"auroc": v["auroc"], "aupr": v["aupr"], "fit_s": v.get("fit_seconds_per_cell")}
                for m, v in by_m.items() if "auroc" in v}
            for b, by_m in by_b.items()
        }
        for d, by_b in agg["overall"].items()
    }


def fusion_table(records: list[dict]) -> dict:
    """fusion_weights[dataset]: how often each fusion candidate was chosen, per budget, and the
    choice of every (fold, seed, budget) cell of the method (from the cells' fusion_weights)."""
    out: dict = {}
    for r in sorted((r for r in records if r["method"] == METHOD and r.get("fusion_weights") is not None),
                    key=lambda r: (r["dataset"], r["budget"], r["fold"], r["seed"])):
        table = out.setdefault(r["dataset"], {"candidates": None, "chosen": {}, "cells": []})
        choice = r.get("fusion_choice")
        if choice and table["candidates"] is None:
            table["candidates"] = choice["candidates"]
        name = json.dumps(r["fusion_weights"])
        counts = table["chosen"].setdefault(str(r["budget"]), {})
        counts[name] = counts.get(name, 0) + 1
        table["cells"].append({"fold": r["fold"], "seed": r["seed"], "budget": r["budget"], "weights": r["fusion_weights"]})
    return out


def merge_previous(agg: dict, path: str, fusion: dict) -> dict:
    """Carry over the (dataset, budget, method) entries of an earlier report (--merge) that this run
    has no cells for, e.g. when that report's per-cell cache is gone, whatever --methods this run
    computed; likewise its fusion choices (`fusion`, this run's fusion_table) of the (dataset,
    budget) pairs this run has no metaad cells for. Returns what was carried, with the commit that
    report was written at."""
    previous = json.loads(Path(path).read_text())
    for dataset, table in previous.get("fusion_weights", {}).items():
        mine = fusion.setdefault(dataset, {"candidates": table.get("candidates"), "chosen": {}, "cells": []})
        for budget, counts in table.get("chosen", {}).items():
            if budget not in mine["chosen"]:
                mine["chosen"][budget] = counts
                mine["cells"] += [c for c in table.get("cells", []) if str(c["budget"]) == budget]
        mine["cells"].sort(key=lambda c: (c["budget"], c["fold"], c["seed"]))
        mine["chosen"] = dict(sorted(mine["chosen"].items(), key=lambda kv: int(kv[0])))
    carried: dict = {}
    for dataset, by_budget in previous.get("overall", {}).items():
        for budget, by_method in by_budget.items():
            mine = agg["overall"].setdefault(dataset, {}).setdefault(budget, {})
            folds = agg["per_fold"].setdefault(dataset, {}).setdefault(budget, {})
            for method, entry in by_method.items():
                if method in mine or "auroc" not in entry:
                    continue
                mine[method] = {**entry, "carried_from": previous.get("commit", "unknown")}
                folds[method] = previous["per_fold"][dataset][budget][method]
                carried.setdefault(dataset, {}).setdefault(budget, []).append(method)
            order = {m: i for i, m in enumerate(ALL_METHODS)}
            for table in (agg["overall"][dataset], agg["per_fold"][dataset]):
                table[budget] = dict(sorted(table[budget].items(), key=lambda kv: order.get(kv[0], len(order))))
    return {"from": str(path), "commit": previous.get("commit", "unknown"), "command": previous.get("command"),
            "entries": carried}


def _pm(entry: dict, key: str) -> str:
    return f"{entry[key]:.3f} ± {entry[key + '_std']:.3f}" if key in entry else "-"


def provenance_of(records: list[dict]) -> dict:
    """Which code computed the cells (a cache mixes runs of several commits) and how many cells
    predate the config fingerprint, so are trusted to match the current configs unchecked."""
    return {
        "cell_commits": sorted({r.get("commit") or "unknown" for r in records}),
        "cells_without_config_fingerprint": sum("config_sha" not in r for r in records),
    }


def markdown_report(agg: dict, args, seconds: float, command: str, provenance: dict, fusion: dict, carried: dict) -> str:
    seeds = list(range(args.seeds))
    lines = [
        "# Quality benchmark: leave-one-family-out (docs/method.md section 7)",
        "",
        f"Scaler: **{args.scaler}** (fitted on training normal rows only). Seeds {seeds} (the `seeds` column: how "
        f"many of them a row has{', cells missing from the cache are left out' if args.cached_only else ''}); budgets "
        f"{args.budgets} labelled rows per meta family; no validation family. Anomaly = positive class. "
        f"{'**QUICK smoke configuration: not a result.** ' if args.quick else ''}"
        + (f"Extra overrides: `{' '.join(args.set)}`. " if args.set else "")
        + f"Mean ± std: per fold over seeds; overall = mean over folds of the per-fold means, ± the std over "
        f"seeds of the fold-averaged value. Runtime of this invocation {seconds / 60:.1f} min "
        f"(cells loaded from the cache cost nothing); fit s/cell = mean training time of one "
        f"(dataset, fold, seed, budget) cell. Machine: {platform.machine()}, {os.cpu_count()} CPUs. Report written at "
        f"commit {git_commit()}; cells computed at commits {', '.join(provenance['cell_commits'])}"
        + (f" ({provenance['cells_without_config_fingerprint']} (cell, method) results predate the config "
           "fingerprint that invalidates cached cells when a config default changes)"
           if provenance["cells_without_config_fingerprint"] else "") + ".",
        "",
        f"Command: `{command}`",
    ]
    if carried.get("entries"):
        lines += ["", f"Rows marked *(carried over)* are copied from the earlier report {carried['from']} (written at "
                  f"commit {carried['commit']} by `{carried['command']}`), whose per-cell cache is not here: this run "
                  "computed none of their cells, so they keep their own seeds, budgets and fit seconds (measured in that "
                  "run, maybe with another --jobs); the fusion tables of budgets this run has no metaad cells for are "
                  "carried over too."]
    for dataset, by_budget in agg["overall"].items():
        for budget, by_method in by_budget.items():
            lines += ["", f"## {dataset}, budget {budget}", ""]
            subset, subset_label, _ = FOLD_SUBSETS.get(dataset, (None, None, None))
            head = ("| method | AUROC | AUPR | FPR@95 |" + (f" AUROC ({subset_label}) | AUPR ({subset_label}) |" if subset else "")
                    + " fit s/cell | folds | seeds |")
            lines += [head, "|" + "---|" * (head.count("|") - 1)]
            for method, e in by_method.items():
                name = f"{method} (carried over)" if "carried_from" in e else method
                row = f"| {name} | {_pm(e, 'auroc')} | {_pm(e, 'aupr')} | {_pm(e, 'fpr95')} |"
                if subset:
                    ld = e.get(subset, {})
                    row += f" {_pm(ld, 'auroc')} | {_pm(ld, 'aupr')} |"
                row += f" {e.get('fit_seconds_per_cell', float('nan')):.1f} | {e['folds']}/{e['of_folds']} | {e.get('seeds', 0)} |"
                lines.append(row)
            per_fold = agg["per_fold"][dataset][budget]
            folds = list(dict.fromkeys(f for pf in per_fold.values() for f in pf))
            for key, label in (("auroc", "AUROC"), ("aupr", "AUPR"), ("fpr95", "FPR@95")):
                lines += ["", f"Per fold {label} (mean ± std over seeds):", ""]
                lines += ["| method | " + " | ".join(folds) + " |", "|" + "---|" * (len(folds) + 1)]
                for method, pf in per_fold.items():
                    lines.append(f"| {method} | " + " | ".join(_pm(pf[f], key) if f in pf else "-" for f in folds) + " |")
            if dataset in SUBSET_NOTES:
                lines += ["", SUBSET_NOTES[dataset]]
        if dataset in fusion:
            table = fusion[dataset]
            lines += ["", f"## {dataset}: fusion weights the method chose", "",
                      f"Candidates (network, kNN, isolation, reconstruction): {table['candidates']}.", "",
                      "| budget | weights chosen | cells |", "|---|---|---|"]
            for budget, counts in table["chosen"].items():
                lines += [f"| {budget} | `{weights}` | {n} |" for weights, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    lines += targets_markdown(check_targets(agg["overall"]))
    return "\n".join(lines) + "\n"


def print_table(agg: dict, log=print) -> None:
    for dataset, by_budget in agg["overall"].items():
        for budget, by_method in by_budget.items():
            log(f"\n{dataset}, budget {budget} (mean over folds)")
            log(f"{'method':<18} {'AUROC':>15} {'AUPR':>15} {'FPR@95':>15} {'folds':>6}")
            for method, e in by_method.items():
                log(f"{method:<18} {_pm(e, 'auroc'):>15} {_pm(e, 'aupr'):>15} {_pm(e, 'fpr95'):>15} {e['folds']:>3}/{e['of_folds']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        start = time.perf_counter()
        records, folds = run_grid(args)
        seconds = time.perf_counter() - start
        methods = [m for m in ALL_METHODS if m in args.methods]
        agg = aggregate(records, folds, methods, args.budgets)
        fusion = fusion_table(records)
        carried = merge_previous(agg, args.merge, fusion) if args.merge else {}
        command = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {
            "benchmark": "quality (leave-one-family-out)",
            "scaler": args.scaler,
            "seeds": list(range(args.seeds)),
            "budgets": args.budgets,
            "quick": args.quick,
            "overrides": list(args.set),
            "seconds": seconds,
            "commit": git_commit(),
            **provenance_of(records),
            "command": command,
            "summary": summary_of(agg),
            "fusion_weights": fusion,
            "targets": check_targets(agg["overall"]),
            "carried_over": carried,
            "overall": agg["overall"],
            "per_fold": agg["per_fold"],
        }
        (out / "quality.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "quality.md").write_text(markdown_report(agg, args, seconds, command, provenance_of(records), fusion, carried))
        print_table(agg)
        print(f"\nwrote {out / 'quality.md'} and {out / 'quality.json'} ({seconds / 60:.1f} min)")
        return 0
    except UserError as exc:
        print(f"quality: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
