"""The local fit's fusion fold networks in forked processes beside its loop (issue 19,
train/fold_processes.py): the same networks and fusion weights as training them one after
another in one process, and a dead or failing child never hangs or silently loses a fold."""
import os

import pytest
import torch

from metaad_dist.errors import ConfigError
from metaad_dist.train.fold_processes import LocalFolds, fold_process_count
from metaad_dist.train.fusion import fold_network, fold_plan
from metaad_dist.train.local import fit_network_only, train_local
from metaad_dist.train.setup import prepare_training

TABULAR_DIGITS = (
    "data=digits", "model=mlp", "meta.episodes=30", "trainer.validate_every=1000", "quiet=true",
    "model.memory_calibration_rows=100", "data.normal=[\"0\",\"1\",\"2\"]", "data.meta=[\"3\",\"4\",\"5\"]",
    "model.fusion_folds=3", "meta.n_support=64", "meta.n_query=64", "model.memory_rows=200",
)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.mark.parametrize("sampler", ["memory", "stream"])
def test_two_processes_train_the_folds_and_give_the_serial_fit(compose, sampler, tmp_path):
    overrides = [*TABULAR_DIGITS, f"trainer.sampler={sampler}"]
    if sampler == "stream":  # pyarrow readers in the forked child
        from metaad_dist.data.prepare import prepare_dataset

        data = compose("data=digits")
        prepare_dataset(data.data, str(tmp_path / "prepared"), data.storage)
        overrides.append(f"data.path={tmp_path / 'prepared'}")
    serial = train_local(compose(*overrides, "trainer.fold_processes=1"))
    parallel = train_local(compose(*overrides, "trainer.fold_processes=2"))
    families = fold_plan(compose(*overrides), serial.setup, fit_network_only)
    assert len(families) == 3
    assert serial.fusion["folds_by_process"] == [families]
    by_process = parallel.fusion["folds_by_process"]
    assert parallel.fusion["fold_processes"] == 2 and sorted(sum(by_process, [])) == sorted(families)
    assert by_process[1], "the forked child started before the loop and trained no fold"
    # Same fold networks, so the same choice on the same evidence and the same model.
    a, b = serial.trained.model.memory, parallel.trained.model.memory
    assert a.weights.tolist() == b.weights.tolist()
    assert (a.choice.aurocs == b.choice.aurocs).all()
    assert_same_weights(serial.trained.model, parallel.trained.model)


def fit_that_fails_in_a_child(parent: int, failure: str):
    def fit(cfg, setup):
        if os.getpid() != parent:
            if failure == "killed":
                os._exit(9)  # as a child killed by the OS would: no message back
            raise ValueError("boom in the fold")
        return fit_network_only(cfg, setup)

    return fit


def test_a_child_that_dies_leaves_its_folds_to_this_process(compose):
    cfg = compose(*TABULAR_DIGITS, "meta.episodes=10")
    setup = prepare_training(cfg)
    families = fold_plan(cfg, setup, fit_network_only)
    lines = []
    with LocalFolds(cfg, setup, families, fit_that_fails_in_a_child(os.getpid(), "killed"), 2, lines.append) as folds:
        networks = folds.networks()
    assert list(networks) == families
    assert folds.report()["folds_by_process"] == [families, []]
    assert any("ended without fold" in line for line in lines)
    for family, network in networks.items():
        assert_same_weights(network, fold_network(cfg, setup, family, fit_network_only))


def test_a_child_that_fails_raises_its_error_here(compose):
    cfg = compose(*TABULAR_DIGITS, "meta.episodes=10")
    setup = prepare_training(cfg)
    families = fold_plan(cfg, setup, fit_network_only)
    with pytest.raises(RuntimeError, match="a fusion fold process failed: ValueError: boom in the fold"):
        with LocalFolds(cfg, setup, families, fit_that_fails_in_a_child(os.getpid(), "raises"), 2) as folds:
            folds.networks()


def test_fold_process_count():
    cpu = torch.device("cpu")
    cores = len(os.sched_getaffinity(0))
    assert fold_process_count(0, 4, cpu) == min(cores, 5)
    assert fold_process_count(3, 1, cpu) == 2  # never more than the folds and the loop
    assert fold_process_count(8, 0, cpu) == 1  # no folds: nothing to fork
    assert fold_process_count(2, 4, torch.device("cuda")) == 1  # a CUDA process cannot fork
    with pytest.raises(ConfigError, match="trainer.fold_processes=-1"):
        fold_process_count(-1, 4, cpu)
