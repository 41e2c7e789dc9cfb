import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from metaad_dist.eval.estimator import MetaADDetector


def test_fit_decision_function_predict_on_unseen_families():
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(str)
    rng = np.random.default_rng(0)
    normal = np.isin(y, ["0", "1", "2", "3", "4"])
    train_normal = normal & (rng.random(len(y)) < 0.7)
    shots = np.concatenate([rng.choice(np.flatnonzero(y == f), 10, replace=False) for f in ("5", "6")])
    train = np.concatenate([np.flatnonzero(train_normal), shots])
    det = MetaADDetector(normal_families=list("01234"), budget=10, episodes=300).fit(x[train], y[train])
    test = np.flatnonzero((normal & ~train_normal) | np.isin(y, ["8", "9"]))
    scores = det.decision_function(x[test])
    assert roc_auc_score(np.isin(y[test], ["8", "9"]), scores) > 0.85
    flags = det.predict(x[test])
    assert set(np.unique(flags)) <= {0, 1}
    assert flags[np.isin(y[test], ["8", "9"])].mean() > flags[~np.isin(y[test], ["8", "9"])].mean()


def test_overrides_parse_like_the_command_line_and_fail_in_one_line():
    from metaad_dist.errors import ConfigError

    cfg = MetaADDetector(overrides=["model.hidden_dims=[16,8]", "model.embed_dim=12"])._config(["n"], ["a"])
    assert list(cfg.model.hidden_dims) == [16, 8] and cfg.model.embed_dim == 12
    for bad, message in [("model.memory_rows", "model.memory_rows"), ("model.embed_dim=wide", "model.embed_dim"),
                         ("model.no_such_key=1", "model.no_such_key")]:
        with pytest.raises(ConfigError, match=message) as info:
            MetaADDetector(overrides=[bad])._config(["n"], ["a"])
        assert len(str(info.value).splitlines()) == 1
