"""The CLI end to end, in process, and every user mistake as a one-line error."""
import subprocess
import sys

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pyarrow as pa
import pytest

from metaad_dist.cli import main


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("metaad: error: ")
    return err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    args = [f"storage.root={root}", "run=quick", "meta.episodes=60", "quiet=true"]
    assert main(["train", *args]) == 0
    return root, args


def test_help_lists_commands_and_groups(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("prepare", "train", "evaluate", "score", "data", "model", "meta", "trainer", "storage", "eval"):
        assert word in out


def test_module_entry_point_prints_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "metaad_dist", "train", "meta.bogus=1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "metaad: error: unknown config key 'meta.bogus'; run `metaad --help` and `metaad <command> --cfg` for valid keys"


def test_unknown_config_key(capsys):
    assert "unknown config key 'model.wings'" in _error(capsys, "train", "model.wings=2")


def test_wrong_type_names_the_key(capsys):
    assert "meta.inner_steps" in _error(capsys, "train", "meta.inner_steps=many")


def test_unknown_family_name(capsys):
    err = _error(capsys, "train", "data.meta=[5,12]")
    assert "data.meta: unknown family '12'" in err


def test_overlapping_roles(capsys):
    err = _error(capsys, "train", "data.validation=[5]")
    assert "family '5'" in err and "must not overlap" in err


def test_empty_role(capsys):
    assert "data.held_out is empty" in _error(capsys, "train", "data.held_out=[]")


def test_k_shot_larger_than_budget(capsys):
    assert "meta.k_shot=12 is larger than meta.budget=10" in _error(capsys, "train", "meta.k_shot=12")


def test_non_numeric_feature_column(capsys, trained_run, tmp_path):
    root, args = trained_run
    table = {f"pixel_{i}": np.zeros(3) for i in range(64)}
    table["pixel_7"] = np.array(["0", "x7", "2"])
    path = tmp_path / "new.csv"
    pacsv.write_csv(pa.table(table), str(path))
    err = _error(capsys, "score", *args, f"input={path}", f"output={tmp_path / 'out.parquet'}")
    assert "column 'pixel_7' is not numeric (value 'x7')" in err
    assert not (tmp_path / "out.parquet").exists()


def test_score_writes_scores_and_flags(trained_run, tmp_path):
    from sklearn.datasets import load_digits

    root, args = trained_run
    x = load_digits().data[:50]
    src = tmp_path / "rows.parquet"
    pq.write_table(pa.table({f"pixel_{i}": x[:, i] for i in range(64)} | {"id": np.arange(50)}), src)
    assert main(["score", *args, f"input={src}", f"output={tmp_path / 'scored.parquet'}"]) == 0
    out = pq.read_table(tmp_path / "scored.parquet")
    assert out.num_rows == 50 and out.column("id").to_pylist() == list(range(50))
    scores = out.column("anomaly_score").to_numpy()
    # Fused evidence (network + normal memory): non-negative, unbounded above.
    assert np.isfinite(scores).all() and (scores >= 0).all() and scores.std() > 0
    assert out.schema.field("is_anomaly").type == pa.bool_()


def test_evaluate_prints_table_and_writes_report(trained_run, capsys):
    import json

    root, args = trained_run
    assert main(["evaluate", *args, "eval.baselines=[isolation_forest]", "eval.budget_curve=[3]"]) == 0
    out = capsys.readouterr().out
    assert "metaad" in out and "isolation_forest" in out and "FPR@95" in out
    summary = out.strip().splitlines()[-1]  # the one line that says what was trained and how it compares
    assert summary.startswith("summary: metaad trained") and "held-out AUROC on unseen 8, 9: metaad " in summary
    report = root / "quick" / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["held_out"]) == {"metaad", "isolation_forest"}
    assert {"overall", "8", "9"} <= set(metrics["held_out"]["metaad"])
    assert set(metrics["auroc_vs_budget"]) == {"3", "10"}
    assert {"threshold", "precision", "recall", "f1"} <= set(metrics["operating_point"])
    # The fusion weights the run chose among the configured candidates are reported.
    from metaad_dist.config import ModelConfig
    from metaad_dist.train.setup import fusion_candidates

    assert metrics["fusion_weights"] in fusion_candidates(ModelConfig())
    assert "## Held-out families" in (report / "report.md").read_text()
    # the secondary numbers: meta families' rows outside the budget pool, in JSON and Markdown
    assert {"overall", "5", "6"} <= set(metrics["seen_meta"]["metaad"])
    assert all(0.5 < m["auroc"] <= 1 for m in metrics["seen_meta"]["metaad"].values())
    assert "## Seen meta families" in (report / "report.md").read_text()
    assert "| metaad | 5 |" in (report / "report.md").read_text()
    assert "Fusion weights (network, knn, isolation, reconstruction)" in (report / "report.md").read_text()
    for png in ("roc_held_out.png", "score_histogram.png", "auroc_vs_budget.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_missing_run(capsys, tmp_path):
    assert "no trained run here" in _error(capsys, "evaluate", f"storage.root={tmp_path}", "run=nothing")


def test_feature_mismatch_with_the_runs_manifest(capsys, trained_run, tmp_path):
    root, args = trained_run
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({f"pixel_{i}": np.zeros(4) for i in range(60)}), path)  # 4 columns short
    err = _error(capsys, "score", *args, f"input={path}", f"output={tmp_path / 'o.parquet'}")
    assert "4 of the model's 64 feature columns are missing (first: ['pixel_60', 'pixel_61', 'pixel_62'])" in err


def test_foreign_or_mismatched_model_file_is_one_line(capsys, trained_run, tmp_path):
    import shutil

    import torch

    root, args = trained_run
    for name, payload in [("tensor", torch.zeros(3)), ("shapes", None)]:
        run = tmp_path / name
        shutil.copytree(root / "quick", run, ignore=shutil.ignore_patterns("report"))
        if payload is None:  # a real payload whose weights no longer fit the recorded model
            payload = torch.load(run / "model.pt", weights_only=True)
            payload["model_args"]["embed_dim"] += 1
        torch.save(payload, run / "model.pt")
        err = _error(capsys, "score", f"storage.root={tmp_path}", f"run={name}",
                     f"input={tmp_path / 'x.csv'}", f"output={tmp_path / 'o.parquet'}")
        assert f"{name}/model.pt" in err
        assert ("not a metaad trained run" if name == "tensor" else "the weights do not fit the recorded model") in err


def test_score_output_replaces_score_columns_of_a_scored_input(trained_run, tmp_path):
    from sklearn.datasets import load_digits

    root, args = trained_run
    x = load_digits().data[:20]
    src = tmp_path / "rows.parquet"
    pq.write_table(pa.table({f"pixel_{i}": x[:, i] for i in range(64)}), src)
    assert main(["score", *args, f"input={src}", f"output={tmp_path / 'once.parquet'}"]) == 0
    assert main(["score", *args, f"input={tmp_path / 'once.parquet'}", f"output={tmp_path / 'twice.parquet'}"]) == 0
    once, twice = pq.read_table(tmp_path / "once.parquet"), pq.read_table(tmp_path / "twice.parquet")
    assert twice.column_names == once.column_names
    assert twice.column("anomaly_score").equals(once.column("anomaly_score"))


@pytest.mark.parametrize("argv, message", [
    (["+meta.episods=5"], "'+meta.episods=5': adding keys is not supported"),
    (["++meta.episodes=5"], "'++meta.episodes=5': adding keys is not supported"),
    (["~seed"], "'~seed': deleting keys is not supported"),
    (["--cfgg"], "unknown option '--cfgg'"),
    (["--config=/no/such.yaml"], "--config /no/such.yaml: no such file"),
])
def test_overrides_outside_the_schema_are_one_line(capsys, argv, message):
    assert message in _error(capsys, "train", *argv)


def test_unwritable_outputs_are_one_line_and_train_checks_before_training(capsys, trained_run, tmp_path):
    root, args = trained_run
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _error(capsys, "train", f"storage.root={blocker}/runs", "run=x", "meta.episodes=100000")
    assert f"{blocker}/runs/x" in err  # refused at once, not after 100000 episodes
    assert "output=o.csv; expected a .parquet file name" in _error(
        capsys, "score", *args, f"input={tmp_path / 'x.csv'}", "output=o.csv")
    err = _error(capsys, "prepare", "data=digits", "output=/proc/no-such-dir/prepared")
    assert "/proc/no-such-dir/prepared" in err


def test_evaluate_reads_a_run_config_written_before_a_setting_existed(capsys, trained_run, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    root, args = trained_run
    shutil.copytree(root / "quick", tmp_path / "old", ignore=shutil.ignore_patterns("report"))
    stored = OmegaConf.load(tmp_path / "old" / "config.yaml")
    del stored.model["fusion_rule"]  # as a run from before that setting was added
    OmegaConf.save(stored, tmp_path / "old" / "config.yaml")
    run = [f"storage.root={tmp_path}", "run=old", "quiet=true", "eval.baselines=[]", "eval.budget_curve=[]"]
    assert main(["evaluate", *run]) == 0
    stored.model["fusion_rul"] = "delong"  # a key the schema does not know
    OmegaConf.save(stored, tmp_path / "old" / "config.yaml")
    assert "old/config.yaml: unknown config key 'model.fusion_rul'" in _error(capsys, "evaluate", *run)
