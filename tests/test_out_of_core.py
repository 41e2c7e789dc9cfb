"""Out-of-core training (issue 18): the streaming setup reads a bounded fit sample, equals the
in-memory setup when the data fits the sample, and never opens held-out families."""
import json

import numpy as np
import pytest
import torch

from metaad_dist.data.prepare import prepare_dataset
from metaad_dist.errors import ConfigError
from metaad_dist.train.local import train_local
from metaad_dist.train.setup import prepare_training


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory):
    """The built-in digits prepared with small row groups, so a cap of a few hundred rows samples."""
    from metaad_dist.cli import compose_config

    cfg = compose_config(["data=digits", "data.source.row_group_size=20"])
    out = str(tmp_path_factory.mktemp("digits") / "prepared")
    prepare_dataset(cfg.data, out, cfg.storage)
    return out


def _cfg(compose, path, *more):
    return compose("data=digits", "model=mlp_image", f"data.path={path}", "meta.episodes=40", "quiet=true", *more)


def _counters(setup) -> dict:
    return setup.summary["read_by_family"]


def test_streaming_equals_memory_when_the_data_fits_the_sample(compose, digits_shards):
    memory = train_local(_cfg(compose, digits_shards, "trainer.sampler=memory"))
    stream = train_local(_cfg(compose, digits_shards, "trainer.sampler=stream"))
    assert memory.setup.path == "memory" and stream.setup.path == "streaming"
    assert stream.setup.summary["complete"]
    a, b = memory.trained.model.state_dict(), stream.trained.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_streaming_statistics_equal_memory_for_the_tabular_preset(compose, digits_shards):
    """Scaler, pseudo-class labels, normal memory and calibration rows: the same rows, same order."""
    common = ("data=digits", "model=mlp", f"data.path={digits_shards}", "data.scaler=quantile",
              "data.normal=[\"0\"]", "meta.n_support=32", "meta.n_query=32", "data.meta=[\"5\",\"6\"]", "data.validation=[\"7\"]", "data.held_out=[\"8\",\"9\"]")
    memory = prepare_training(compose(*common, "trainer.sampler=memory"))
    stream = prepare_training(compose(*common, "trainer.sampler=stream"))
    np.testing.assert_array_equal(memory.memory_x, stream.memory_x)
    np.testing.assert_array_equal(memory.calibration_x, stream.calibration_x)
    np.testing.assert_array_equal(memory.val_normal_x, stream.val_normal_x)
    for family in memory.validation_x:
        np.testing.assert_array_equal(memory.validation_x[family], stream.validation_x[family])
    for family in memory.view.budget_row_ids:
        np.testing.assert_array_equal(memory.view.budget_row_ids[family], stream.view.budget_row_ids[family])
    x = memory.memory_x[:50]
    np.testing.assert_array_equal(memory.labeler.predict(x, np.zeros(len(x), dtype=np.int64)),
                                  stream.labeler.predict(x, np.zeros(len(x), dtype=np.int64)))
    for e in (0, 7, 31):
        a, b = memory.sampler.episode(e), stream.sampler.episode(e)
        np.testing.assert_array_equal(a.support_x, b.support_x)
        np.testing.assert_array_equal(a.query_y, b.query_y)
        np.testing.assert_array_equal(a.shots_x, b.shots_x)


def _assert_capped(setup, cfg, cap: int, row_group: int):
    counters = _counters(setup)
    normal_rows = sum(counters.get(f, {}).get("rows_read", 0) for f in cfg.data.normal)
    assert 0 < normal_rows <= cap, counters
    assert setup.summary["rows_read"] == normal_rows and not setup.summary["complete"]
    assert len(setup.view.normal_x) < setup.summary["training_rows"]
    for family in cfg.data.meta:  # only the row groups that hold budget rows
        assert counters[family]["rows_read"] <= cfg.meta.budget * row_group, (family, counters[family])
    for family in cfg.data.held_out:
        assert all(v == 0 for v in counters.get(family, {}).values()), (family, counters.get(family))


def test_setup_reads_at_most_the_caps_and_never_held_out_families(compose, digits_shards):
    cfg = _cfg(compose, digits_shards, "trainer.sampler=auto", "data.fit_sample_rows=300")
    setup = prepare_training(cfg)
    assert setup.path == "streaming"  # auto: the normal families hold more rows than the cap
    _assert_capped(setup, cfg, 300, 20)
    assert "statistics fitted on" in setup.describe() and "sampled" in setup.describe()
    # The run trains from the streamed episodes and records its path.
    result = train_local(cfg, setup=setup)
    assert np.isfinite(result.history[-1]["inner_loss"])
    reader = setup.sampler.read_counters()
    assert all(sum(reader.get(f, {}).values()) == 0 for f in cfg.data.held_out)


def test_setup_on_s3_reads_at_most_the_caps(compose, s3):
    from metaad_dist.cli import compose_config

    prep = compose_config(["data=digits", "data.source.row_group_size=20"])
    uri = s3.uri("digits")
    prepare_dataset(prep.data, uri, s3.storage())
    cfg = _cfg(compose, uri, f"storage.endpoint_url={s3.endpoint_url}", "data.fit_sample_rows=250")
    setup = prepare_training(cfg)
    assert setup.path == "streaming"
    _assert_capped(setup, cfg, 250, 20)


def test_auto_keeps_small_data_in_memory_and_metrics_record_the_path(compose, digits_shards, tmp_path, capsys):
    from metaad_dist.train.launch import train_command

    cfg = _cfg(compose, digits_shards, f"storage.root={tmp_path}", "run=small", "quiet=false")
    train_command(cfg)
    assert "[data] in memory: 541 training normal rows" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "small" / "metrics.json").read_text())
    assert metrics["data"] == {"path": "memory", "training_rows": 541}

    cfg = _cfg(compose, digits_shards, f"storage.root={tmp_path}", "run=big", "data.fit_sample_rows=300")
    train_command(cfg)
    metrics = json.loads((tmp_path / "big" / "metrics.json").read_text())
    assert metrics["data"]["path"] == "streaming" and metrics["data"]["rows_read"] <= 300


def test_buffers_too_small_for_an_episode_fail_before_features_are_read(compose, digits_shards):
    cfg = _cfg(compose, digits_shards, "trainer.sampler=stream", "sampler.buffer_rows=30")
    with pytest.raises(ConfigError, match="sampler.buffer_rows=30") as err:
        prepare_training(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (("trainer.sampler=disk",), "trainer.sampler='disk'; expected one of"),
    (("trainer.sampler=actors",), "trainer.sampler=actors needs trainer=ray"),
    (("data.fit_sample_rows=0",), "data.fit_sample_rows=0; expected a positive integer"),
])
def test_sampler_settings_are_one_line_errors(compose, digits_shards, overrides, message):
    with pytest.raises(ConfigError, match=message):
        prepare_training(_cfg(compose, digits_shards, *overrides))


def test_stream_needs_a_prepared_dataset(compose):
    with pytest.raises(ConfigError, match="streams a prepared dataset"):
        prepare_training(compose("data=digits", "model=mlp_image", "trainer.sampler=stream"))
