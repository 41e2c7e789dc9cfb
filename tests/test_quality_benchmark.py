"""benchmarks/quality.py: a --quick leave-one-family-out run writes the report and resumes from its cache."""
import importlib
import json
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    # Imported by name from benchmarks/ so that --jobs workers (spawned interpreters) find it too.
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module("quality")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def quick_args(tmp_path, *extra):
    return [
        "--quick", "--datasets", "digits", "--seeds", "1", "--budgets", "5",
        "--folds", "8", "9", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), *extra,
    ]


@pytest.mark.slow
def test_quick_run_writes_report_with_summary_schema(quality, tmp_path, capsys):
    assert quality.main(quick_args(tmp_path)) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "quality.json").read_text())
    md = (tmp_path / "out" / "quality.md").read_text()

    summary = report["summary"]
    assert set(summary) == {"digits"} and set(summary["digits"]) == {"5"}
    assert set(summary["digits"]["5"]) == set(quality.ALL_METHODS)  # the method itself is "metaad"
    for method, metrics in summary["digits"]["5"].items():
        assert set(metrics) == {"auroc", "aupr", "fit_s"}
        assert 0.0 <= metrics["auroc"] <= 1.0 and 0.0 <= metrics["aupr"] <= 1.0 and metrics["fit_s"] > 0
    assert report["targets"] == []  # the targets are stated at 10 and 50 shots on the real datasets
    assert set(report["per_fold"]["digits"]["5"]["metaad"]) == {"8", "9"}
    # oneclass_only: the same metaad fit re-scored with the one-class fusion candidate
    oneclass, metaad = summary["digits"]["5"]["oneclass_only"], summary["digits"]["5"]["metaad"]
    assert oneclass["fit_s"] == metaad["fit_s"]
    cells = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("*-oneclass_only.json")]
    assert len(cells) == 2 and all(c["fusion_weights"][0] == 0.0 for c in cells)
    assert report["scaler"] == "quantile" and report["quick"] is True
    assert "QUICK" in md and "| metaad |" in md and "Scaler: **quantile**" in md
    assert "digits, budget 5" in printed
    # Each method cell records the fusion weights its run chose and what it chose from: the AUROC
    # of each candidate with each meta family held out in turn (never the cell's held-out family).
    cell = json.loads(next((tmp_path / "cache").rglob("seed0-budget5-metaad.json")).read_text())
    from metaad_dist.config import ModelConfig
    from metaad_dist.train.setup import fusion_candidates

    assert cell["fusion_weights"] in fusion_candidates(ModelConfig())
    choice = cell["fusion_choice"]
    assert choice["candidates"] == fusion_candidates(ModelConfig()) and len(choice["aurocs"]) == len(choice["candidates"])
    assert choice["families"] and cell["fold"] not in choice["families"]
    assert all(len(a) == len(choice["families"]) for a in choice["aurocs"])
    # ... and the report counts those choices per dataset and budget (two cells: folds 8 and 9).
    fusion = report["fusion_weights"]["digits"]
    assert fusion["candidates"] == choice["candidates"] and sum(fusion["chosen"]["5"].values()) == 2
    assert {(c["fold"], c["seed"]) for c in fusion["cells"]} == {("8", 0), ("9", 0)}
    assert "## digits: fusion weights the method chose" in md

    # Resumable: a second run finds every cell in the cache and reports the same numbers.
    assert quality.main(quick_args(tmp_path)) == 0
    assert "2 cells, 2 complete in the cache, 0 to run" in capsys.readouterr().out
    again = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert again["summary"] == summary

    # Rerunning the ablation alone refits its parent: both come from one fit, never two.
    assert quality.main(quick_args(tmp_path, "--methods", "oneclass_only", "--rerun", "oneclass_only")) == 0
    out = capsys.readouterr().out
    assert "2 cells, 0 complete in the cache, 2 to run" in out and "metaad " in out and "oneclass_only " in out

    # Two worker processes compute the same cells to the same numbers (a fresh cache).
    parallel = tmp_path / "parallel"
    args = quick_args(parallel, "--jobs", "2", "--methods", "isolation_forest", "devnet")
    assert quality.main(args) == 0
    both = json.loads((parallel / "out" / "quality.json").read_text())["summary"]["digits"]["5"]
    def quality_of(cells: dict) -> dict:  # fit_s is a time, not a result: it differs run to run
        return {m: {k: v for k, v in cells[m].items() if k != "fit_s"} for m in ("isolation_forest", "devnet")}

    assert quality_of(both) == quality_of(summary["digits"]["5"])


def test_merge_carries_over_what_this_run_lacks(quality, tmp_path, capsys):
    assert quality.main(quick_args(tmp_path, "--methods", "isolation_forest", "--folds", "8")) == 0
    args = quick_args(tmp_path, "--methods", "isolation_forest", "devnet", "--folds", "8")
    earlier = tmp_path / "earlier.json"
    entry = {"auroc": 0.5, "aupr": 0.25, "fpr95": 0.9, "auroc_std": 0.0, "aupr_std": 0.0, "fpr95_std": 0.0, "folds": 1, "of_folds": 1, "complete": True, "seeds": 3,
             "fit_seconds_per_cell": 7.0}
    earlier.write_text(json.dumps({
        "commit": "abc1234", "command": "python benchmarks/quality.py ...",
        "overall": {"digits": {"5": {"devnet": entry, "isolation_forest": {**entry, "auroc": 0.01}, "prenet": entry}}},
        "per_fold": {"digits": {"5": {"devnet": {"8": entry}, "isolation_forest": {"8": entry}, "prenet": {"8": entry}}}},
        "fusion_weights": {"digits": {"candidates": [[1, 0], [0, 1]], "chosen": {"5": {"[1, 0]": 1}},
                                      "cells": [{"fold": "8", "seed": 0, "budget": 5, "weights": [1, 0]}]}},
    }))
    assert quality.main([*args, "--cached-only", "--merge", str(earlier)]) == 0
    report = json.loads((tmp_path / "out" / "quality.json").read_text())
    summary = report["summary"]["digits"]["5"]
    assert summary["devnet"] == {"auroc": 0.5, "aupr": 0.25, "fit_s": 7.0}  # carried: this run has no devnet cell
    assert summary["isolation_forest"]["auroc"] != 0.01  # computed here: the earlier entry does not replace it
    # Every method this run lacks is carried, even one outside its --methods, and the fusion
    # choices of a budget it has no metaad cells for.
    assert summary["prenet"]["auroc"] == 0.5
    assert report["carried_over"]["entries"] == {"digits": {"5": ["devnet", "prenet"]}}
    assert report["fusion_weights"]["digits"]["chosen"] == {"5": {"[1, 0]": 1}}
    assert "| devnet (carried over) |" in (tmp_path / "out" / "quality.md").read_text()


def test_tep_reports_the_mean_without_faults_3_9_15(quality):
    records = [{"dataset": "tep", "budget": 10, "method": "gbdt", "fold": fold, "seed": 0, "auroc": auroc,
                "aupr": auroc, "fpr95": 0.0, "fit_seconds": 1.0} for fold, auroc in (("fault1", 0.9), ("fault3", 0.5))]
    overall = quality.aggregate(records, {"tep": ["fault1", "fault3"]}, ["gbdt"], [10])["overall"]["tep"]["10"]["gbdt"]
    assert overall["auroc"] == pytest.approx(0.7) and overall["without_3_9_15"]["auroc"] == pytest.approx(0.9)
    assert overall["without_3_9_15"]["folds"] == 1


def test_user_mistakes_are_one_line_errors(quality, tmp_path, capsys):
    assert quality.main(quick_args(tmp_path, "--methods", "lof")) == 2
    assert "unknown method 'lof'" in capsys.readouterr().err
    assert quality.main(quick_args(tmp_path, "--scaler", "robust")) == 2
    assert "--scaler='robust'" in capsys.readouterr().err
    assert quality.main(quick_args(tmp_path, "--merge", str(tmp_path / "none.json"))) == 2
    assert "--merge" in capsys.readouterr().err


def test_family_names_are_quoted_for_hydra(quality):
    assert quality.family_list(["DoS", "it's"]) == "['DoS','it\\'s']"


DATASETS = REPO.parent / "shared" / "datasets"


@pytest.mark.slow
@pytest.mark.skipif(not (DATASETS / "nsl_kdd").is_dir(), reason="raw NSL-KDD / UNSW-NB15 files not present")
def test_real_datasets_follow_the_protocol(quality, tmp_path):
    """Prepared on the fly; test rows = NSL-KDD's official KDDTest+ (normals + the held-out
    category), UNSW-NB15's 20% test normals + every row of the held-out family."""
    args = [
        "--quick", "--datasets", "nsl_kdd", "unsw_nb15", "--folds", "U2R", "Worms", "--seeds", "1",
        "--budgets", "5", "--methods", "isolation_forest", "--data-root", str(tmp_path / "prepared"),
        "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
    ]
    assert quality.main(args) == 0
    summary = json.loads((tmp_path / "out" / "quality.json").read_text())["summary"]
    assert set(summary) == {"nsl_kdd", "unsw_nb15"}
    cells = {r["dataset"]: r for r in map(json.loads, (p.read_text() for p in (tmp_path / "cache").rglob("*.json")))}
    assert (cells["nsl_kdd"]["n_normal"], cells["nsl_kdd"]["n_anomaly"]) == (9711, 67)  # KDDTest+ normal, U2R
    assert (cells["unsw_nb15"]["n_normal"], cells["unsw_nb15"]["n_anomaly"]) == (7400, 44)  # 20% of 37,000; Worms


@pytest.mark.slow
def test_ablations_compare_every_variant_and_cached_only_merges(quality, tmp_path, capsys):
    ablations = importlib.import_module("ablations")
    args = ["--quick", "--datasets", "digits", "--seeds", "1", "--budget", "5", "--folds", "8",
            "--out", str(tmp_path / "abl"), "--cache", str(tmp_path / "cache")]
    assert ablations.main(args) == 0
    rows = json.loads((tmp_path / "abl" / "ablations.json").read_text())
    assert [r["variant"] for r in rows] == [label for label, _ in ablations.VARIANTS]
    for r in rows:
        assert 0.0 <= r["results"]["digits"]["auroc"] <= 1.0
    assert (tmp_path / "abl" / "ablations.md").read_text().count("\n| ") == len(ablations.VARIANTS) + 1

    # --cached-only reports what the cache holds and computes nothing (the method at budget 5 only).
    out = tmp_path / "merged"
    merged = ["--quick", "--datasets", "digits", "--seeds", "1", "--budgets", "5", "50", "--folds", "8",
              "--cache", str(tmp_path / "cache"), "--out", str(out), "--cached-only"]
    assert quality.main(merged) == 0
    summary = json.loads((out / "quality.json").read_text())["summary"]["digits"]
    assert set(summary) == {"5"} and set(summary["5"]) == {"metaad"}


def test_cached_cells_of_another_config_are_not_reused(quality, tmp_path, capsys):
    args = quick_args(tmp_path, "--methods", "isolation_forest", "--folds", "8")
    assert quality.main(args) == 0
    cell_path = next((tmp_path / "cache").rglob("seed0-budget5-isolation_forest.json"))
    cell = json.loads(cell_path.read_text())
    assert len(cell["config_sha"]) == 12
    report = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert report["cell_commits"] == [cell["commit"]] and report["cells_without_config_fingerprint"] == 0
    capsys.readouterr()

    # As if a default in configs/ had changed since the cell was computed.
    cell_path.write_text(json.dumps({**cell, "config_sha": "0" * 12}))
    assert quality.main([*args, "--cached-only"]) == 0
    out = capsys.readouterr().out
    assert "1 cached (cell, method) results were computed under another config (first: digits/8/seed0/budget5/isolation_forest): left out" in out
    assert quality.main(args) == 0  # without --cached-only it is recomputed
    assert "recomputed" in capsys.readouterr().out
    assert json.loads(cell_path.read_text())["config_sha"] == cell["config_sha"]


def test_a_memory_or_fusion_setting_changes_the_methods_fingerprint_not_the_baselines(quality):
    from metaad_dist.cli import compose_config

    base = compose_config(["data=digits"])
    changed = compose_config(["data=digits", "model.fusion_fold_episodes=0.5", "model.memory_reconstruction=autoencoder",
                              "model.background_features=deviation", "meta.update_order=sequential",
                              "meta.synthetic_shots=8"])
    for method in ("metaad", "oneclass_only"):
        assert quality.cell_fingerprint(base, method) != quality.cell_fingerprint(changed, method)
        # a cell computed before model.background_features, meta.update_order and the synthetic
        # anomalies existed matches their values then (row, sequential, none), not today's order
        earlier = compose_config(["data=digits"])
        with open_dict(earlier.model), open_dict(earlier.meta):
            del earlier.model["background_features"]
            for key in ("update_order", "synthetic_shots", "synthetic_fraction", "synthetic_scale"):
                del earlier.meta[key]
        then = compose_config(["data=digits", "meta.update_order=sequential"])
        assert quality.cell_fingerprint(earlier, method) == quality.cell_fingerprint(then, method)
        assert quality.cell_fingerprint(then, method) != quality.cell_fingerprint(base, method)
    for method in ("deep_sad", "inner_only", "oc_ensemble"):
        assert quality.cell_fingerprint(base, method) == quality.cell_fingerprint(changed, method)
        other = compose_config(["data=digits", "model.hidden_dims=[16]"])  # what baselines do read still counts
        assert quality.cell_fingerprint(other, method) != quality.cell_fingerprint(base, method)


def test_targets_are_computed_from_the_report_and_partial_entries_decide_nothing():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        targets = importlib.import_module("quality_targets")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def entry(auroc, aupr, fit=10.0, seeds=5, complete=True):
        return {"auroc": auroc, "aupr": aupr, "fit_seconds_per_cell": fit, "seeds": seeds, "complete": complete}

    overall = {"nsl_kdd": {
        "10": {"metaad": entry(0.9678, 0.74, fit=12.0), "oneclass_only": entry(0.9678, 0.74, fit=12.0),
               "inner_only": entry(0.99, 0.99),  # an ablation, never the best baseline
               "oc_ensemble": entry(0.963, 0.70), "deep_sad": entry(0.81, 0.52, fit=7.7),
               "xgbod": entry(0.999, 0.999, seeds=1, complete=False)},  # some folds only: not a peer yet
        "50": {"metaad": entry(0.968, 0.73), "deep_sad": entry(0.83, 0.50)},
    }}
    rows = {r["target"]: r for r in targets.check_targets(overall)}
    assert rows["10 shots: AUROC >= best baseline + 0.02"]["met"] is False
    assert rows["10 shots: AUROC >= best baseline + 0.02"]["detail"] == "0.968 vs oc_ensemble 0.963"
    assert rows["10 shots: AUPR >= best baseline's"]["met"] is True
    assert rows["10 shots: AUROC >= oneclass_only + 0.01"]["met"] is False
    assert rows["50 shots: AUPR >= its 10-shot AUPR"]["met"] is False  # 0.73 < 0.74
    assert rows["50 shots: AUPR >= best baseline's"]["met"] is True
    fit = rows["10 shots: fit s/cell <= 1.5x deep_sad's (issue 19)"]
    assert fit["met"] is False and fit["detail"] == "12.0 s vs 7.7 s (1.56x)"
    assert rows["10 shots: AUROC >= 0.968 (issue 19's record)"]["met"] is True  # 0.9678 shows as 0.968
    overall["nsl_kdd"]["10"]["metaad"]["complete"] = False
    assert {r["met"] for r in targets.check_targets(overall) if "10 shots" in r["target"]} == {None}
    md = "\n".join(targets.targets_markdown(targets.check_targets(overall)))
    assert "| nsl_kdd | 10 shots: AUROC >= oneclass_only + 0.01 | 0.968 vs 0.968 | not measured | 5 | - |" in md


def test_fusion_grid_reenacts_each_rule_from_the_lomo_aurocs_and_reports_the_held_out_pick(quality):
    """benchmarks/fusion_grid.py: a rule picks from the LOMO AUROCs only; the held-out AUROC of its
    pick is what gets reported (two hand-made cells: the network-led candidate leads LOMO in one)."""
    fusion_grid = importlib.import_module("fusion_grid")
    grid = fusion_grid.GRID
    led, one_class = fusion_grid.key(grid[0]), fusion_grid.key(grid[1])

    def cell(lomo_led, held_led):
        lomo = {fusion_grid.key(w): [0.80, 0.80] for w in grid} | {led: lomo_led, one_class: [0.85, 0.85]}
        held = {fusion_grid.key(w): {"auroc": 0.5, "aupr": 0.1} for w in grid}
        held |= {led: {"auroc": held_led, "aupr": 0.3}, one_class: {"auroc": 0.9, "aupr": 0.4}}
        return {"dataset": "d", "held_out": held, "lomo_auroc": lomo}

    cells = [cell([0.95, 0.97], 0.70), cell([0.70, 0.72], 0.99)]
    summary = fusion_grid.summarise(cells)["d"]
    picks = summary["picks"]["defaults [1,0.5,0,0] [0,1,1,1] / best_mean"]
    assert picks["chosen"] == {led: 1, one_class: 1}
    assert picks["auroc"] == pytest.approx((0.70 + 0.9) / 2)  # led where LOMO says so, however it does held out
    assert summary["candidates"][led]["auroc"] == pytest.approx((0.70 + 0.99) / 2)
    assert summary["candidates"][one_class]["lomo_auroc"] == pytest.approx(0.85)


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "kdd99"], "fusion_grid: error: --datasets kdd99: expected one of unsw_nb15, nsl_kdd, tep, digits"),
    (["--datasets", "digits", "--set", "model.no_such_key=1"], "fusion_grid: error: "),
])
def test_fusion_grid_user_mistakes_are_one_line_errors(quality, tmp_path, capsys, argv, message):
    fusion_grid = importlib.import_module("fusion_grid")
    assert fusion_grid.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "fusion_grid.json").exists()
