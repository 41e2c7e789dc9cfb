"""Synthetic anomalies of the outer loop (meta/synthetic.py, meta.synthetic_shots)."""
import numpy as np
import pytest
import torch

from metaad_dist.config import MetaConfig
from metaad_dist.episodes.sampler import EpisodeSampler
from metaad_dist.errors import ConfigError
from metaad_dist.meta.learner import MetaLearner
from metaad_dist.meta.synthetic import synthetic_anomalies
from metaad_dist.model.networks import MetaADModel


def _normal(rows=200, features=6, seed=0):
    x = (np.random.default_rng(seed).normal(size=(rows, features)) * np.arange(1, features + 1)).astype(np.float32)
    x[:, -1] = 0.5  # a feature constant among the normal rows
    return x


def test_synthetic_rows_depart_from_their_normal_row_by_the_configured_spread():
    x = _normal(features=12)
    out = synthetic_anomalies(x, 500, 0.3, (1.0, 3.0), (0, 7))
    assert out.shape == (500, 12) and out.dtype == np.float32
    # each is a normal row moved on some features: its base is the row it shares the most values with
    base = x[(out[:, None, :] == x[None]).sum(axis=2).argmax(axis=1)]
    moved = ~np.isclose(out, base)
    assert moved[:, :-1].any(axis=1).all()  # every row departs on at least one feature
    assert not moved[:, -1].any()  # a constant feature has no spread to move by
    assert 0.15 < moved[:, :-1].mean() < 0.45  # about the configured share (plus the one forced)
    steps = np.abs(out - base)[moved] / np.broadcast_to(x.std(axis=0), out.shape)[moved]
    assert steps.min() >= 1.0 - 1e-4 and steps.max() <= 3.0 + 1e-4
    shift = (out - base)[moved]
    assert (shift > 0).mean() == pytest.approx(0.5, abs=0.1)  # either direction


def test_synthetic_rows_are_a_function_of_the_key():
    x = _normal()
    same = synthetic_anomalies(x, 20, 0.3, (1.0, 3.0), (0, 7))
    assert np.array_equal(same, synthetic_anomalies(x, 20, 0.3, (1.0, 3.0), (0, 7)))
    assert not np.array_equal(same, synthetic_anomalies(x, 20, 0.3, (1.0, 3.0), (0, 8)))
    assert not np.array_equal(same, synthetic_anomalies(x, 20, 0.3, (1.0, 3.0), (1, 7)))


def _learner(**meta):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    budget = {f: rng.normal(loc=3.0, size=(5, 6)).astype(np.float32) for f in ("a", "b")}
    cfg = MetaConfig(n_support=16, n_query=16, k_shot=3, budget=5, synthetic_shots=4, **meta)
    sampler = EpisodeSampler(x, rng.integers(0, 3, 300), np.zeros(300, int), 1, budget, cfg, 0)
    torch.manual_seed(0)
    return MetaLearner(MetaADModel(6, 3, (16,), 8), cfg, torch.device("cpu"), seed=3), sampler


def test_each_episode_brings_its_own_synthetic_rows_whatever_the_batch():
    """Stacked episodes keep their rows episode by episode (the margin is per episode), and an
    episode's synthetic rows do not depend on which batch or worker draws it."""
    learner, sampler = _learner(episodes_per_step=2)
    e0, e1 = sampler.episode(0), sampler.episode(1)
    _, _, shots, family = learner._outer_rows([e0, e1])
    alone = [learner._outer_rows([e]) for e in (e0, e1)]
    assert torch.equal(shots, torch.cat([a[2] for a in alone]))
    assert torch.equal(family, torch.cat([a[3] for a in alone]))
    per_episode = len(e0.shots_x) + 4
    assert shots.shape[0] == 2 * per_episode
    synthetic = shots[len(e0.shots_x):per_episode]
    assert torch.equal(synthetic, torch.as_tensor(synthetic_anomalies(e0.support_x, 4, 0.25, (1.0, 3.0), (3, 0))))
    assert family[len(e0.shots_x):per_episode].tolist() == [len(e0.meta_families)] * 4  # a family of their own


@pytest.mark.parametrize("meta", [{"update_order": "sequential", "pcgrad": True}, {"curriculum_families": 1}, {}])
def test_synthetic_rows_train_with_every_outer_option(meta):
    learner, sampler = _learner(**meta)
    before = [p.detach().clone() for p in learner.outer_params]
    metrics = learner.step(sampler.episode(0))
    assert np.isfinite(metrics["outer_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.outer_params))


@pytest.mark.parametrize("settings, message", [
    ({"synthetic_shots": -1}, r"^meta.synthetic_shots=-1; expected an integer >= 0 \(0 = off\)$"),
    ({"synthetic_shots": 4, "synthetic_fraction": 0.0}, r"^meta.synthetic_fraction=0.0; expected a share"),
    ({"synthetic_shots": 4, "synthetic_scale": [3.0, 1.0]}, r"^meta.synthetic_scale=\[3.0, 1.0\]; expected \[low, high\]"),
])
def test_bad_synthetic_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        MetaLearner(MetaADModel(6, 3, (16,), 8), MetaConfig(**settings), torch.device("cpu"))


def test_the_local_trainer_checks_meta_settings_before_reading_data(compose, monkeypatch):
    from metaad_dist.train import local

    def no_data(*_):
        raise AssertionError("data was read before the settings were checked")

    monkeypatch.setattr(local, "prepare_training", no_data)
    with pytest.raises(ConfigError, match=r"^meta.synthetic_fraction=1.5; expected a share"):
        local.train_local(compose("data=digits", "meta.synthetic_shots=4", "meta.synthetic_fraction=1.5"))
