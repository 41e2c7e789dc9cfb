"""FeatureScaler applies scikit-learn's fitted scalers without importing scikit-learn: the
results must be scikit-learn's own, and a scaler restored from a checkpoint must give them too."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.preprocessing import QuantileTransformer, StandardScaler

from metaad_dist.data.scaling import QUANTILES, FeatureScaler


def _rows(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = np.column_stack([
        rng.normal(size=4000),
        rng.integers(0, 3, size=4000),  # ties: repeated quantiles
        np.where(rng.random(4000) < 0.9, 0.0, rng.exponential(size=4000)),  # mostly one value
        rng.lognormal(size=4000),
        np.full(4000, 7.0),  # constant
    ])
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["quantile", "standard"])
def test_transform_equals_scikit_learn(kind, dtype):
    train = _rows(dtype)
    test = _rows(dtype, seed=1) * np.array([1, 1, 1, 3, 1], dtype=dtype)  # beyond the fitted range too
    test[:5, 0] = [np.nan, -1e6, 1e6, train[:, 0].min(), train[:, 0].max()]
    if kind == "quantile":
        reference = QuantileTransformer(n_quantiles=min(QUANTILES, len(train)), output_distribution="normal",
                                        subsample=len(train), random_state=3).fit(train)
    else:
        reference = StandardScaler().fit(train)
    expected = np.nan_to_num(reference.transform(test), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    scaler = FeatureScaler(kind, seed=3).fit(train)
    restored = FeatureScaler.from_state_dict(scaler.state_dict())
    for fitted in (scaler, restored):
        got = fitted.transform(test)
        assert got.dtype == np.float32 and got.shape == test.shape
        if kind == "quantile":
            np.testing.assert_array_equal(got, expected)  # bit for bit
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.isfinite(got).all()


def test_none_and_empty_pass_rows_through():
    x = _rows(np.float64)
    np.testing.assert_array_equal(FeatureScaler("none").fit(x).transform(x), x.astype(np.float32))
    assert FeatureScaler("quantile").fit(x).transform(x[:0]).shape == (0, 5)


def test_applying_a_scaler_does_not_import_scikit_learn():
    """The point of applying it here: a scoring actor (eval/score_ray.py, a run's TrainedModel)
    starts without scikit-learn and SciPy."""
    code = (
        "import sys, numpy as np, torch\n"
        "from metaad_dist.data.scaling import FeatureScaler\n"
        "import metaad_dist.eval.score_ray, metaad_dist.train.artifacts\n"
        "grid = torch.tensor([0., 1., 2.])\n"
        "state = {'kind': 'quantile', 'quantiles': torch.stack([grid, grid], 1), 'references': grid / 2}\n"
        "FeatureScaler.from_state_dict(state).transform(np.ones((4, 2)))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"imported: {out.strip()}"
