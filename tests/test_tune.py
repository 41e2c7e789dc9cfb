"""Ray Tune sweeps on the built-in dataset (prepared to Parquet so read counters exist)."""
import json

import pytest
from omegaconf import OmegaConf

from conftest import ray_files_containing

from metaad_dist.cli import main
from metaad_dist.tune.results import trial_rows, write_outputs
from metaad_dist.tune.sweep import run_sweep, sweep_path

# Same seed, same config, same single-threaded CPU ops: the retrained run matches its trial.
REPRODUCE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "prepared"
    assert main(["prepare", "data=digits", f"output={out}", "quiet=true"]) == 0
    return out


@pytest.fixture(scope="module")
def sweep(ray_local, prepared_digits, tmp_path_factory):
    from metaad_dist.cli import compose_config

    root = tmp_path_factory.mktemp("sweep")
    cfg = compose_config([
        "data=digits", f"data.path={prepared_digits}", f"storage.root={root}", "quiet=true",
        "meta.episodes=120", "trainer.validate_every=40", "tune.budgets=[5,10]", "tune.num_samples=2",
        "tune.name=test",
    ])
    grids = run_sweep(cfg)
    rows = [row for b, grid in zip(cfg.tune.budgets, grids) for row in trial_rows(grid, cfg.meta.episodes, b)]
    out = write_outputs(rows, cfg, root / "report")
    return cfg, rows, out


def test_sweep_runs_at_least_four_trials_with_a_best_per_budget(sweep):
    cfg, rows, out = sweep
    assert len(rows) >= 4
    assert {r["budget"] for r in rows} == {5, 10}
    assert set(out["best"]) == {5, 10}
    for row in rows:
        assert 0.5 < row["val_auroc"] <= 1.0
    report = (out["out_dir"] + "/results.md")
    text = open(report).read()
    assert "Best per budget" in text and "best_budget_5.yaml" in text
    assert open(out["out_dir"] + "/budget_curve.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert open(out["out_dir"] + "/results.csv").read().count("\n") == len(rows) + 1


def test_held_out_families_are_never_read_during_a_sweep(sweep):
    _, rows, _ = sweep
    for row in rows:
        assert row["held_out_rows_read"] == 0
    # the counters are live: training families were read through the same source
    assert all(r["trainable_rows_read"] > 0 for r in rows)


def test_exported_config_retrains_to_its_trials_validation_auroc(sweep, tmp_path, capsys):
    cfg, _, out = sweep
    budget, best = max(out["best"].items())
    exported = out["exported"][budget]
    assert main(["train", "--config", exported, f"storage.root={tmp_path}", "run=retrained"]) == 0
    val = json.loads((tmp_path / "retrained" / "metrics.json").read_text())["final"]["val_auroc"]
    assert abs(val - best["val_auroc"]) <= REPRODUCE_TOLERANCE, (val, best["val_auroc"])
    retrained = OmegaConf.load(tmp_path / "retrained" / "config.yaml")
    assert retrained.meta.budget == budget and retrained.meta.k_shot <= budget


def test_interrupted_sweep_continues_when_rerun(sweep):
    """Rerunning the same sweep restores each budget's experiment instead of starting over."""
    cfg, rows, _ = sweep
    grids = run_sweep(cfg)
    again = [row for b, grid in zip(cfg.tune.budgets, grids) for row in trial_rows(grid, cfg.meta.episodes, b)]
    assert sorted(r["trial"] for r in again) == sorted(r["trial"] for r in rows)
    assert sweep_path(cfg).endswith("tune")


def test_rerun_with_another_config_under_the_same_name_is_refused(sweep):
    from metaad_dist.errors import ConfigError

    cfg, _, _ = sweep
    changed = cfg.copy()
    changed.meta.episodes = 80
    with pytest.raises(ConfigError, match="tune.name='test': .* holds a sweep run with another config"):
        run_sweep(changed)


def test_trials_with_more_than_100_reports_run_to_the_end(ray_local, prepared_digits, tmp_path):
    """ASHA's max_t is the trial's own report count, not Ray's default of 100 iterations."""
    from metaad_dist.cli import compose_config

    cfg = compose_config([
        "data=digits", f"data.path={prepared_digits}", f"storage.root={tmp_path}", "quiet=true",
        "meta.episodes=110", "trainer.validate_every=1", "tune.budgets=[5]", "tune.num_samples=1",
        "tune.name=long", "tune.space=[{path: meta.inner_steps, kind: choice, choices: [1]}]",
    ])
    (grid,) = run_sweep(cfg)
    (row,) = trial_rows(grid, cfg.meta.episodes, 5)
    assert row["completed"] and row["episode"] == 110


def test_asha_settings_outside_the_trials_reports(capsys):
    err = _one_line_error(capsys, "tune", "meta.episodes=100", "trainer.validate_every=10", "tune.grace_period=50")
    assert "tune.grace_period=50; expected 1 to 11, the validation reports of a trial" in err
    assert "tune.reduction_factor=1; expected an integer >= 2" in _one_line_error(capsys, "tune", "tune.reduction_factor=1")


def _one_line_error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_empty_search_space_is_a_config_error(capsys):
    assert "tune.space is empty" in _one_line_error(capsys, "tune", "tune.space=[]")


def test_parameter_path_that_does_not_exist(capsys):
    err = _one_line_error(capsys, "tune", "tune.space=[{path: meta.nope, kind: choice, choices: [1]}]")
    assert "tune.space[0].path='meta.nope' is not a config key" in err


def test_search_values_of_the_wrong_type_are_one_line_naming_the_entry(capsys):
    err = _one_line_error(capsys, "tune", "tune.space=[{path: meta.inner_steps, kind: choice, choices: [1, abc]}]")
    assert "tune.space[0].choices: 'abc' does not fit meta.inner_steps (Value 'abc' of type 'str' could not be " in err
    err = _one_line_error(capsys, "tune", "tune.space=[{path: meta.inner_steps, kind: uniform, low: 0.5, high: 2.5}]")
    assert "tune.space[0] (uniform): 0.5 does not fit meta.inner_steps (Value '0.5' of type 'float' could not be " in err


def test_each_trial_can_be_a_ray_train_run(ray_local, tmp_path):
    from metaad_dist.cli import compose_config

    cfg = compose_config([
        "data=digits", f"storage.root={tmp_path}", "quiet=true", "meta.episodes=60", "trainer.validate_every=30",
        "tune.budgets=[5]", "tune.num_samples=2", "tune.max_concurrent_trials=1", "tune.trainable=ray",
        "tune.scheduler=fifo", "trainer.num_workers=1", "tune.name=ray-trials",
    ])
    (grid,) = run_sweep(cfg)
    rows = trial_rows(grid, cfg.meta.episodes, 5)
    assert len(rows) == 2 and all(r["completed"] and 0.5 < r["val_auroc"] <= 1 for r in rows)
    # both validations reached Tune, the one at episode 30 without a checkpoint too
    assert all(r.metrics_dataframe["episode"].tolist() == [30, 60] for r in grid)
    # tune.max_concurrent_trials=1: one trial after the other (timestamps have 1 s resolution)
    spans = sorted((r.metrics["timestamp"] - r.metrics["time_total_s"], r.metrics["timestamp"]) for r in grid)
    assert spans[1][0] >= spans[0][1] - 1.5, spans
    runs = tmp_path / "tune" / "ray-trials" / "runs"
    assert sorted(p.name for p in runs.iterdir() if (p / "model.pt").is_file()) == sorted(
        f"trial-{r['trial']}" for r in rows)


def test_sweep_on_s3_writes_experiments_runs_and_report_there(ray_local, s3, capsys):
    """Trials are Ray Train runs started by Ray workers that lack the driver's AWS keys."""
    overrides = [
        "data=digits", f"storage.root={s3.uri('sweeps')}", f"storage.endpoint_url={s3.endpoint_url}",
        "meta.episodes=40", "trainer.validate_every=20", "tune.budgets=[5]", "tune.num_samples=1",
        "tune.trainable=ray", "tune.scheduler=fifo", "trainer.num_workers=1", "tune.name=remote",
        "tune.space=[{path: meta.inner_steps, kind: choice, choices: [1]}]",
    ]
    assert main(["tune", *overrides]) == 0
    printed = capsys.readouterr().out
    assert f"-> {s3.uri('sweeps', 'tune', 'remote', 'report', 'best_budget_5.yaml')}" in printed
    keys = s3.keys("sweeps/tune/remote/")
    report = {k.rsplit("/", 1)[1] for k in keys if "/report/" in k}
    assert {"results.md", "results.csv", "budget_curve.png", "best_budget_5.yaml"} <= report
    assert any(k.startswith("sweeps/tune/remote/budget_5/") for k in keys)  # Tune's experiment state
    assert any(k.startswith("sweeps/tune/remote/runs/trial-") and k.endswith("/model.pt") for k in keys)
    assert "sweeps/tune/remote/sweep_config.yaml" in keys
    # A rerun restores the finished experiment from S3 instead of training again.
    assert main(["tune", *overrides]) == 0
    assert s3.keys("sweeps/tune/remote/runs/") == [k for k in keys if k.startswith("sweeps/tune/remote/runs/")]
    # The keys reached the trials, but no Ray log, runtime env record or experiment state holds them.
    assert ray_files_containing(s3.server.secret_key) == []
    client = s3.server.client()
    assert not [k for k in keys if s3.server.secret_key.encode() in client.get_object(Bucket=s3.bucket, Key=k)["Body"].read()]
