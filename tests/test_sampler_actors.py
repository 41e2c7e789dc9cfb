"""Episode sampler actors (episodes/buffered.py, shards.py, actors.py) on real prepared Parquet:
the Ray-free core against the in-memory EpisodeSampler, then the Ray pool on a local folder and
on the SeaweedFS S3 server, with an actor killed mid-run."""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from conftest import ray_files_containing

from metaad_dist.config import Config, DataConfig, MetaConfig, SamplerConfig, StorageConfig
from metaad_dist.data.prepare import prepare_dataset
from metaad_dist.data.prepared import PreparedSource
from metaad_dist.data.roles import FamilyRoles
from metaad_dist.data.scaling import FeatureScaler
from metaad_dist.data.views import build_training_view
from metaad_dist.episodes.buffered import BufferedEpisodeSampler, EpisodeBlock
from metaad_dist.episodes.shard_reader import ShardReader
from metaad_dist.episodes.shards import build_plan
from metaad_dist.errors import ConfigError
from metaad_dist.meta.labels import ClassLabeler

REPO = Path(__file__).resolve().parent.parent
FIELDS = ("support_rows", "query_rows", "support_x", "support_y", "query_x", "query_y", "shots_x", "shots_family")


def _make_synthetic():
    spec = importlib.util.spec_from_file_location("make_synthetic", REPO / "benchmarks" / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_synthetic


def assert_same_episode(a, b) -> None:
    assert a.index == b.index
    assert a.normal_families == b.normal_families and a.meta_families == b.meta_families
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"episode {a.index}: {name}")
    assert a.shot_rows.keys() == b.shot_rows.keys()
    for family in a.shot_rows:
        np.testing.assert_array_equal(a.shot_rows[family], b.shot_rows[family])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """6,000 rows x 8 features, families normal (~3,600 rows, 60% of them training rows), a00..a03;
    row groups of 256 rows, so a 400-row buffer streams."""
    path = tmp_path_factory.mktemp("synth") / "data"
    _make_synthetic()(str(path), rows=6000, features=8, families=4, normal_fraction=0.6, row_group_size=256,
                      rows_per_shard=1024)
    return path


def synthetic_config(path, **sampler) -> Config:
    data = DataConfig(name="synthetic", path=str(path), normal=["normal"], meta=["a00", "a01"], validation=["a02"],
                      held_out=["a03"])
    meta = MetaConfig(n_support=48, n_query=32, k_shot=3, budget=6)
    settings = dict(num_actors=2, buffer_rows=400, refill_fraction=0.5, reuse=1.0, batch_rows=100, prefetch=8,
                    episodes_per_call=4)
    settings.update(sampler)
    return Config(data=data, meta=meta, sampler=SamplerConfig(**settings), seed=3)


def fitted(cfg: Config, storage: StorageConfig = StorageConfig()):
    """The run's training view, scaler and k-means labeler (single normal family), as train.setup fits them."""
    source = PreparedSource(cfg.data.path, storage)
    roles = FamilyRoles.from_config(cfg.data, source.family_names())
    view = build_training_view(source, roles, cfg.data, cfg.meta, cfg.seed)
    scaler = FeatureScaler(cfg.data.scaler, cfg.seed).fit(view.normal_x)
    normal_x = scaler.transform(view.normal_x)
    labeler = ClassLabeler(len(view.normal_families), 4, cfg.seed)
    labels = labeler.fit_transform(normal_x, view.normal_family_index)
    return view, scaler, labeler, normal_x, labels


def local_samplers(cfg: Config, scaler, labeler, budget_row_ids=None):
    plan, counters = build_plan(cfg.data.path, StorageConfig(), cfg.data, cfg.meta, cfg.sampler, cfg.seed,
                                scaler.state_dict(), labeler.state_dict(), budget_row_ids)
    reader = ShardReader(plan)
    return plan, counters, reader, [BufferedEpisodeSampler(plan, r, reader.read_unit) for r in range(plan.num_actors)]


# --------------------------------------------------------------------------- the Ray-free core


def test_whole_families_give_exactly_the_in_memory_episodes(compose, tmp_path):
    """Digits (5 normal families, each fits a buffer): every field equals EpisodeSampler's."""
    from metaad_dist.train.setup import prepare_training

    prepare_dataset(compose("data=digits").data, str(tmp_path / "digits"), StorageConfig())
    cfg = compose("data=digits", f"data.path={tmp_path / 'digits'}", "meta.normal_per_episode=2", "meta.n_support=64", "meta.n_query=48",
                  "meta.meta_per_episode=1", "sampler.num_actors=3")
    setup = prepare_training(cfg)
    labeler = ClassLabeler(5, cfg.model.pseudo_classes, cfg.seed)
    _, _, _, samplers = local_samplers(OmegaConf.to_object(cfg), setup.scaler, labeler, setup.view.budget_row_ids)
    episodes = [samplers[i % 3].episode(i) for i in range(60)]
    for e in episodes:
        assert_same_episode(setup.sampler.episode(e.index), e)
    for e, back in zip(episodes[:8], EpisodeBlock.pack(episodes[:8]).episodes()):  # the object-store packing
        assert_same_episode(e, back)


def test_streamed_buffers_use_only_training_rows_and_are_reproducible(synthetic):
    cfg = synthetic_config(synthetic)
    view, scaler, labeler, normal_x, labels = fitted(cfg)
    plan, _, reader, samplers = local_samplers(cfg, scaler, labeler, view.budget_row_ids)
    rows = PreparedSource(str(synthetic)).family_rows("normal")
    assert plan.normal[0].training_rows == len(normal_x) == rows - 2 * round(0.2 * rows)  # the seed's train split
    buffers = [s.buffers[0] for s in samplers]
    assert all(not b.static and b.capacity == 400 + 200 for b in buffers)  # bounded: window + one refill
    assert set(buffers[0].units).isdisjoint(buffers[1].units)  # actors own different row groups
    assert plan.refill_period == 5  # reuse 1 x 200 rows x 2 actors / 80 rows per episode

    episodes = [samplers[i % 2].episode(i) for i in range(120)]  # 24 generations: buffers cycle their rows
    seen = set()
    for e in episodes:
        drawn = np.concatenate([e.support_rows, e.query_rows])
        assert len(set(drawn.tolist())) == len(drawn)  # support and query disjoint
        # Positions index the in-memory training rows: features and k-means labels agree exactly,
        # so no validation or test normal row was ever sampled.
        np.testing.assert_array_equal(e.support_x, normal_x[e.support_rows])
        np.testing.assert_array_equal(e.query_y, labels[e.query_rows])
        for family, shots in e.shot_rows.items():
            np.testing.assert_array_equal(e.shots_x[e.shots_family == e.meta_families.index(family)],
                                          scaler.transform(view.budget_x[family])[shots])
        seen |= set(drawn.tolist())
    assert len(seen) > 1000  # the stream moves through the family

    # Reproducible whatever path an actor took: a fresh one jumping in (a restart or a checkpoint
    # restore), and one going back to an earlier generation, build the same episodes.
    _, _, _, fresh = local_samplers(cfg, scaler, labeler, view.budget_row_ids)
    for i in (117, 64, 65, 3, 118):
        assert_same_episode(episodes[i], fresh[i % 2].episode(i))
    for i in (2, 119):
        assert_same_episode(episodes[i], samplers[i % 2].episode(i))


def test_reads_budget_rows_only_and_never_opens_held_out_or_validation(synthetic):
    cfg = synthetic_config(synthetic)
    view, scaler, labeler, _, _ = fitted(cfg)
    manifest = PreparedSource(str(synthetic)).manifest
    for family in ("a03", "a02"):  # held out, validation: their shards may as well not exist
        for shard in (synthetic / manifest["shard_root"] / f"family={family}").iterdir():
            shard.rename(shard.with_suffix(".hidden"))
    try:
        plan, counters, reader, samplers = local_samplers(cfg, scaler, labeler)  # budget drawn from row ids
        for i in range(40):
            samplers[i % 2].episode(i)
    finally:
        for family in ("a03", "a02"):
            for shard in (synthetic / manifest["shard_root"] / f"family={family}").iterdir():
                shard.rename(shard.with_suffix(".parquet"))
    for family in view.budget_row_ids:  # drawn by the plan exactly as the training view draws them
        np.testing.assert_array_equal(plan.budget_row_ids[family], view.budget_row_ids[family])
    totals = {f: {k: counters.get(f, {}).get(k, 0) + reader.counters.get(f, {}).get(k, 0)
                  for k in ("files_opened", "rows_read", "id_rows_read", "rows_kept", "bytes_read")}
              for f in manifest["families"]}
    for family in ("a03", "a02"):
        assert totals[family] == dict.fromkeys(totals[family], 0), family
    for family in ("a00", "a01"):
        assert totals[family]["rows_kept"] == 6  # the budget, nothing more
        # Features decoded only in the row groups that hold budget rows (found by row-id statistics).
        holding = 0
        for shard in (synthetic / manifest["shard_root"] / f"family={family}").iterdir():
            pf = pq.ParquetFile(shard)
            for rg in range(pf.metadata.num_row_groups):
                ids = pf.read_row_group(rg, columns=["row_id"]).column(0).to_numpy()
                holding += len(ids) if np.isin(ids, view.budget_row_ids[family]).any() else 0
        assert totals[family]["rows_read"] == holding
    assert totals["normal"]["rows_kept"] > 0 and totals["normal"]["rows_read"] >= totals["normal"]["rows_kept"]


def test_user_mistakes_are_one_line_config_errors(synthetic):
    cfg = synthetic_config(synthetic)
    _, scaler, labeler, _, _ = fitted(cfg)
    cases = {
        "sampler.buffer_rows=20": dict(buffer_rows=20),
        r"sampler.refill_fraction=0.0; expected a value in \(0, 1\]": dict(refill_fraction=0.0),
        "sampler.num_actors=0": dict(num_actors=0),
    }
    for message, settings in cases.items():
        with pytest.raises(ConfigError, match=message) as exc:
            local_samplers(synthetic_config(synthetic, **settings), scaler, labeler)
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="budget_row_ids: family 'a03' is not in data.meta"):
        local_samplers(cfg, scaler, labeler, {"a03": np.array([1])})


# --------------------------------------------------------------------------- Ray actors


def test_pool_on_s3_gives_the_in_memory_episodes_and_counts_reads(ray_local, compose, s3):
    from metaad_dist.episodes.actors import SamplerPool
    from metaad_dist.train.setup import prepare_training

    uri = s3.uri("digits")
    prepare_dataset(compose("data=digits").data, uri, s3.storage())
    cfg = compose("data=digits", f"data.path={uri}", f"storage.endpoint_url={s3.endpoint_url}",
                  "sampler.prefetch=16", "sampler.episodes_per_call=4")
    setup = prepare_training(cfg)
    with SamplerPool.from_training_setup(cfg, setup) as pool:
        for i in range(40):
            assert_same_episode(setup.sampler.episode(i), pool.episode(i))
        e = pool.episode(40)
        assert not e.support_x.flags.writeable  # a view into the object store, not a copy
        counters = pool.read_counters()
    for family in cfg.data.held_out + cfg.data.validation:
        assert counters[family] == dict.fromkeys(counters[family], 0), family
    for family in cfg.data.meta:
        assert counters[family]["rows_kept"] == cfg.meta.budget
    for family in cfg.data.normal:
        assert counters[family]["rows_kept"] > 0 and counters[family]["bytes_read"] > 0
    # the actors got the driver's keys (Ray's processes were started without them) but no Ray
    # log or runtime env record holds the secret
    assert ray_files_containing(s3.server.secret_key) == []


def test_killed_actor_restarts_and_sampling_continues_identically(ray_local, synthetic):
    import ray

    from metaad_dist.episodes.actors import SamplerPool

    cfg = synthetic_config(synthetic, max_restarts=2)
    view, scaler, labeler, _, _ = fitted(cfg)
    steady = SamplerPool(cfg, scaler, labeler, view.budget_row_ids)
    faulty = SamplerPool(cfg, scaler, labeler, view.budget_row_ids)
    try:
        expected = [steady.episode(i) for i in range(60)]  # 12 generations: buffers refill throughout
        for i in range(20):
            assert_same_episode(expected[i], faulty.episode(i))
        before = [m["pid"] for m in faulty.memory()]
        ray.kill(faulty.actors[0], no_restart=False)  # mid-run, with episodes in flight
        for i in range(20, 60):
            assert_same_episode(expected[i], faulty.episode(i))
        after = [m["pid"] for m in faulty.memory()]
        assert after[0] != before[0] and after[1] == before[1]  # actor 0 restarted, 1 untouched

        # Checkpoint state: a pool restored from it continues where the other stopped.
        state = faulty.state_dict()
        assert state["next_index"] == 60
        steady.load_state_dict(pickle.loads(pickle.dumps(state)))
        assert_same_episode(steady.episode(60), faulty.episode(60))
        with pytest.raises(ConfigError, match="sampler state was saved for another dataset, seed or"):
            steady.load_state_dict({**state, "fingerprint": "0123456789abcdef"})
        with pytest.raises(ConfigError, match=r"^meta.n_support \+ meta.n_query = 80 but sampler actor 0 holds 20 "):
            SamplerPool(synthetic_config(synthetic, buffer_rows=20), scaler, labeler)  # raised in the plan task

        # A pool handed on (as to Ray Train workers) travels without its prefetch window and
        # samples the same episodes.
        copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(faulty))
        assert not copy._pending
        assert_same_episode(expected[37], copy.episode(37))
    finally:
        steady.shutdown()
        faulty.shutdown()


def test_damaged_shard_is_one_line_naming_it(synthetic, tmp_path):
    import json
    import shutil

    from metaad_dist.errors import DataError, UserError

    copy = tmp_path / "data"
    shutil.copytree(synthetic, copy)
    cfg = synthetic_config(copy)
    view, scaler, labeler, _, _ = fitted(cfg)
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = next(s for s in manifest["shards"] if s["path"].startswith("family=normal/"))
    path = copy / manifest["shard_root"] / shard["path"]
    path.write_bytes(path.read_bytes()[: shard["bytes"] // 2])  # a cut copy
    for read in (lambda: local_samplers(cfg, scaler, labeler), lambda: PreparedSource(str(copy)).read(["normal"])):
        with pytest.raises(DataError) as err:
            read()
        message = str(err.value)
        assert f"{shard['path']} of family 'normal' has {shard['bytes'] // 2} bytes, not {shard['bytes']}" in message
        assert "re-run metaad prepare" in message and len(message.splitlines()) == 1
    path.write_bytes(b"\0" * shard["bytes"])  # the right size, not Parquet
    with pytest.raises(UserError, match=r": unreadable data \(") as err:
        PreparedSource(str(copy)).read(["normal"])
    assert len(str(err.value).splitlines()) == 1
    path.unlink()
    with pytest.raises(DataError, match=f"{shard['path']} of family 'normal' is missing"):
        PreparedSource(str(copy)).read(["normal"])
