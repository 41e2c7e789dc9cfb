import numpy as np

from metaad_dist.eval.evaluate import at_threshold
from metaad_dist.eval.threshold import choose_threshold


def test_threshold_flags_the_f1_best_validation_rows_under_strictly_above():
    normal, anomalies = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.9])
    t = choose_threshold(normal, anomalies)
    assert 0.4 < t < 0.9
    op = at_threshold(normal, anomalies, t)
    assert op["precision"] == op["recall"] == op["f1"] == 1.0


def test_threshold_matches_the_best_f1_on_overlapping_scores():
    rng = np.random.default_rng(0)
    normal, anomalies = rng.normal(0, 1, 500), rng.normal(1.5, 1, 50)
    t = choose_threshold(normal, anomalies)
    best = max(
        at_threshold(normal, anomalies, c - 1e-12)["f1"] for c in np.concatenate([normal, anomalies])
    )  # every ">= c" cut, written as "> c - eps"
    assert at_threshold(normal, anomalies, t)["f1"] == best


def test_threshold_without_validation_anomalies_is_a_normal_quantile():
    normal = np.arange(100, dtype=float)
    assert choose_threshold(normal, None) == np.quantile(normal, 0.95)
    assert choose_threshold(normal, np.array([])) == np.quantile(normal, 0.95)
