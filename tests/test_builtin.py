"""The built-in datasets: the same rows every time, and the synthetic one has the structure its
docstring claims (anomaly families share one direction of deviation, each adds its own)."""
import numpy as np
import pytest
import yaml

from metaad_dist.data.builtin import SYNTHETIC_DIMS, SYNTHETIC_SHIFT, load_builtin
from metaad_dist.errors import ConfigError


def _family_means(table, prefix):
    names = sorted({f for f in table.families if f.startswith(prefix)})
    return names, np.array([table.features[table.families == f].mean(axis=0) for f in names])


def test_synthetic_is_one_fixed_table_with_the_configured_families():
    a, b = load_builtin("synthetic"), load_builtin("synthetic")
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.dtype == np.float32 and a.features.shape == (4500 + 8 * 300, sum(SYNTHETIC_DIMS))
    roles = yaml.safe_load(open("configs/data/synthetic.yaml"))
    named = [f for role in ("normal", "meta", "validation", "held_out") for f in roles[role]]
    assert sorted(named) == sorted(set(a.families)) and len(named) == len(set(named))


def test_synthetic_anomalies_deviate_along_a_shared_direction_within_the_normal_spread():
    table = load_builtin("synthetic")
    cluster_dims = SYNTHETIC_DIMS[0]
    _, normal = _family_means(table, "n")
    _, anomaly = _family_means(table, "a")
    normal_centre = normal[:, cluster_dims:].mean(axis=0)
    shifts = anomaly[:, cluster_dims:] - normal_centre
    assert np.allclose(np.linalg.norm(shifts, axis=1), SYNTHETIC_SHIFT, atol=0.3)
    unit = shifts / np.linalg.norm(shifts, axis=1, keepdims=True)
    common = unit.mean(axis=0) / np.linalg.norm(unit.mean(axis=0))
    assert (unit @ common).min() > 0.5  # every family leans the same way ...
    assert (unit @ unit.T)[np.triu_indices(len(unit), 1)].mean() < 0.8  # ... yet each has its own
    normal_spread = table.features[np.char.startswith(table.families.astype(str), "n")][:, cluster_dims:].std(axis=0)
    assert np.allclose(normal_spread, 1.0, atol=0.1)  # a shift of 2 is two normal standard deviations


def test_unknown_builtin_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError, match="expected one of \\['builtin:digits', 'builtin:synthetic'\\]"):
        load_builtin("mnist")
