import dataclasses

import numpy as np
import pytest

from metaad_dist.config import MetaConfig
from metaad_dist.data.roles import FamilyRoles
from metaad_dist.data.source import BuiltinSource
from metaad_dist.data.views import build_test_view, build_training_view
from metaad_dist.episodes.sampler import EpisodeSampler
from metaad_dist.episodes.schedule import multidirectional_schedule


def _sampler(seed=0, **meta):
    rng = np.random.default_rng(0)
    fam = np.repeat(np.arange(3), 100)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    budget = {"a": rng.normal(size=(10, 5)), "b": rng.normal(size=(10, 5)), "c": rng.normal(size=(4, 5))}
    cfg = MetaConfig(n_support=40, n_query=30, k_shot=5, budget=10, **meta)
    return EpisodeSampler(x, fam, fam, 3, budget, cfg, seed), budget


def test_support_and_query_are_disjoint():
    sampler, _ = _sampler()
    for e in range(50):
        ep = sampler.episode(e)
        assert len(ep.support_rows) == 40 and len(ep.query_rows) == 30
        assert not set(ep.support_rows) & set(ep.query_rows)


def test_shots_come_only_from_the_budget_pool():
    sampler, budget = _sampler()
    for e in range(50):
        ep = sampler.episode(e)
        for family, rows in ep.shot_rows.items():
            assert rows.max() < len(budget[family])
            assert len(set(rows)) == len(rows) <= 5
        pools = np.concatenate([budget[f] for f in ep.meta_families])
        assert all((pools == shot).all(axis=1).any() for shot in ep.shots_x)


def test_same_seed_same_episodes_and_other_seed_differs():
    a, _ = _sampler(seed=1)
    b, _ = _sampler(seed=1)
    c, _ = _sampler(seed=2)
    for e in (0, 7, 31):
        ea, eb, ec = a.episode(e), b.episode(e), c.episode(e)
        assert (ea.support_x == eb.support_x).all() and (ea.shots_x == eb.shots_x).all()
        assert ea.meta_families == eb.meta_families
        assert not np.array_equal(ea.support_rows, ec.support_rows)


def test_schedule_pairs_every_meta_group_with_every_normal_subset():
    schedule = multidirectional_schedule(3, ["a", "b", "c", "d"], normal_per_episode=2, meta_per_episode=1, seed=0)
    assert len(schedule) == 3 * 4
    assert {(n, m) for n, m in schedule} == {
        (n, (m,)) for n in [(0, 1), (1, 2), (2, 0)] for m in "abcd"
    }
    sampler, _ = _sampler(normal_per_episode=1, meta_per_episode=1)
    episodes = [sampler.episode(e) for e in range(len(sampler.schedule))]
    assert {(ep.normal_families, ep.meta_families) for ep in episodes} == set(sampler.schedule)
    for ep in episodes:  # rows really come from the episode's normal family only
        assert (ep.support_y == ep.normal_families[0]).all()


class CountingSource(BuiltinSource):
    def __init__(self):
        super().__init__("digits")
        self.requested: list[str] = []

    def read(self, families):
        self.requested += list(families)
        return super().read(families)


def _digits_roles():
    from metaad_dist.config import DataConfig

    data = DataConfig(name="digits", path="builtin:digits", normal=["0", "1", "2", "3", "4"], meta=["5", "6"],
                      validation=["7"], held_out=["8", "9"])
    return data, FamilyRoles.from_config(data, [str(i) for i in range(10)])


def test_held_out_families_are_never_read_for_training_and_budget_is_fixed():
    data, roles = _digits_roles()
    source = CountingSource()
    meta = MetaConfig(budget=10, k_shot=5, n_support=64, n_query=64)
    view = build_training_view(source, roles, data, meta, seed=3)
    assert not {"8", "9"} & set(source.requested)
    assert set(view.budget_x) == {"5", "6"} and all(len(x) == 10 for x in view.budget_x.values())
    again = build_training_view(CountingSource(), roles, data, meta, seed=3)
    assert all((again.budget_row_ids[f] == view.budget_row_ids[f]).all() for f in view.budget_x)
    test = build_test_view(CountingSource(), roles, data, meta, seed=3)
    # the test view's unseen meta rows exclude exactly the budget pool
    full = CountingSource().read(["5"])
    assert len(test.seen_meta_x["5"]) == (full.families == "5").sum() - 10
    # train, validation and test normals are disjoint and cover the normal rows
    n_normal = len(CountingSource().read(roles.normal))
    assert len(view.normal_x) + len(view.val_normal_x) + len(test.normal_x) == n_normal
    rows = lambda x: {r.tobytes() for r in x}  # digits has no duplicate rows
    assert not rows(view.normal_x) & rows(test.normal_x)
    assert not rows(view.normal_x) & rows(view.val_normal_x)
    assert not rows(view.val_normal_x) & rows(test.normal_x)


def test_training_sampler_never_exceeds_budget_over_many_episodes():
    from metaad_dist.train.setup import prepare_training
    from metaad_dist.config import Config
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(Config)
    data, _ = _digits_roles()
    cfg.data = OmegaConf.structured(data)
    cfg.meta.budget, cfg.meta.k_shot = 6, 4
    setup = prepare_training(cfg)
    used = {f: set() for f in setup.sampler.budget_x}
    for e in range(200):
        for family, rows in setup.sampler.episode(e).shot_rows.items():
            used[family] |= set(rows.tolist())
    assert all(len(u) <= 6 for u in used.values())
    assert all(len(x) == 6 for x in setup.sampler.budget_x.values())


def test_k_shot_larger_than_budget_is_a_config_error():
    from metaad_dist.errors import ConfigError

    data, roles = _digits_roles()
    with pytest.raises(ConfigError, match=r"meta.k_shot=11 is larger than meta.budget=10"):
        build_training_view(CountingSource(), roles, data, MetaConfig(k_shot=11, budget=10), seed=0)


class PartlySplitSource(CountingSource):
    """Digits with an official test file that holds rows of the validation and held-out
    families only: the normal families must still get a test share, the same one in every view."""

    def read(self, families):
        table = super().read(families)
        split = np.where(np.isin(table.families, ["7", "8", "9"]) & (table.row_ids % 2 == 0), "test", "train")
        return dataclasses.replace(table, split=split)


def test_views_agree_on_the_split_when_only_some_families_have_official_test_rows():
    data, roles = _digits_roles()
    meta = MetaConfig(budget=10, k_shot=5, n_support=64, n_query=64)
    view = build_training_view(PartlySplitSource(), roles, data, meta, seed=3)
    test = build_test_view(PartlySplitSource(), roles, data, meta, seed=3)
    n_normal = len(CountingSource().read(roles.normal))
    assert len(test.normal_x) > 0
    assert len(view.normal_x) + len(view.val_normal_x) + len(test.normal_x) == n_normal
    rows = lambda x: {r.tobytes() for r in x}
    assert not rows(view.normal_x) & rows(test.normal_x)  # no training normal is scored as a test normal
    full = PartlySplitSource().read(["8"])
    assert len(test.held_out_x["8"]) == ((full.families == "8") & (full.split == "test")).sum()


class ValidationOnlyInTestFileSource(CountingSource):
    def read(self, families):
        table = super().read(families)
        return dataclasses.replace(table, split=np.where(table.families == "7", "test", "train"))


def test_validation_family_without_training_rows_is_a_config_error():
    from metaad_dist.errors import ConfigError

    data, roles = _digits_roles()
    meta = MetaConfig(budget=10, k_shot=5, n_support=64, n_query=64)
    with pytest.raises(ConfigError, match="data.validation: family '7' has no training rows to validate on"):
        build_training_view(ValidationOnlyInTestFileSource(), roles, data, meta, seed=3)
