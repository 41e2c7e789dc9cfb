"""benchmarks/quality.py: a --quick leave-one-family-out run writes the report and resumes from its cache."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        assert set(metrics) == {"auroc", "aupr"}
        assert 0.0 <= metrics["auroc"] <= 1.0 and 0.0 <= metrics["aupr"] <= 1.0
    assert set(report["per_fold"]["digits"]["5"]["metaad"]) == {"8", "9"}
    assert report["scaler"] == "quantile" and report["quick"] is True
    assert "QUICK" in md and "| metaad |" in md and "Scaler: **quantile**" in md
    assert "digits, budget 5" in printed

    # Resumable: a second run finds every cell in the cache and reports the same numbers.
    assert quality.main(quick_args(tmp_path)) == 0
    assert "fold 9 seed 0 budget 5: cached" in capsys.readouterr().out
    again = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert again["summary"] == summary


def test_user_mistakes_are_one_line_errors(quality, tmp_path, capsys):
    assert quality.main(quick_args(tmp_path, "--methods", "lof")) == 2
    assert "unknown method 'lof'" in capsys.readouterr().err
    assert quality.main(quick_args(tmp_path, "--scaler", "robust")) == 2
    assert "--scaler='robust'" in capsys.readouterr().err


def test_family_names_are_quoted_for_hydra(quality):
    assert quality.family_list(["DoS", "it's"]) == "['DoS','it\\'s']"
