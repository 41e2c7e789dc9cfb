"""The one-line summary of `metaad evaluate` (the last line of scripts/run.sh): what was trained,
on which families, and a verdict against the ablation that follows the measured difference."""
import numpy as np
import pytest

from metaad_dist.eval.evaluate import ABLATION, METHOD, versus_ablation
from metaad_dist.eval.report import summary_line


def _metrics(method: float, ablation: float, se: float) -> dict:
    overall = lambda a: {"overall": {"auroc": a}}  # noqa: E731
    return {
        "budget": 10,
        "trained": {"episodes": 600, "seed": 0, "normal": ["0", "1"], "meta": ["5", "6"], "held_out": ["8", "9"]},
        "held_out": {METHOD: overall(method), ABLATION: overall(ablation), "isolation_forest": overall(0.743)},
        "versus_ablation": {"baseline": ABLATION, "auroc_difference": method - ablation, "standard_error": se},
    }


@pytest.mark.parametrize("method, ablation, verdict", [
    (0.966, 0.968, "(-0.002 ±0.010 at 95%: no significant difference, so this run does not show the method beating its inner loop alone)"),
    (0.990, 0.968, "(+0.022 ±0.010 at 95%: the method beats its inner loop alone on this run)"),
    (0.940, 0.968, "(-0.028 ±0.010 at 95%: the method trails its inner loop alone on this run)"),
])
def test_summary_says_what_was_trained_and_what_the_difference_means(method, ablation, verdict):
    line = summary_line(_metrics(method, ablation, 0.010 / 1.96), METHOD)
    assert "\n" not in line
    assert line.startswith("summary: metaad trained 600 episodes on normal 0, 1 with 10 labelled rows each of 5, 6 "
                           "(seed 0); held-out AUROC on unseen 8, 9: ")
    assert f"metaad {method:.3f} vs inner-loop-only ablation {ablation:.3f} {verdict} vs isolation_forest 0.743" in line


def test_without_the_ablation_the_summary_only_lists_the_baselines():
    metrics = _metrics(0.966, 0.968, 0.005)
    del metrics["held_out"][ABLATION]
    metrics["versus_ablation"] = None
    assert summary_line(metrics, METHOD).endswith("8, 9: metaad 0.966 vs isolation_forest 0.743")


def test_versus_ablation_is_the_paired_auroc_difference_and_its_delong_error():
    rng = np.random.default_rng(0)
    normal, anomalies = rng.normal(0, 1, 300), rng.normal(1.5, 1, 100)
    noisy = lambda x: x + rng.normal(0, 0.5, len(x))  # noqa: E731
    same = versus_ablation({METHOD: (normal, {"a": anomalies}), ABLATION: (normal, {"a": anomalies})})
    assert same == {"baseline": ABLATION, "auroc_difference": 0.0, "standard_error": 0.0}
    other = versus_ablation({METHOD: (normal, {"a": anomalies[:50], "b": anomalies[50:]}),
                             ABLATION: (noisy(normal), {"a": noisy(anomalies[:50]), "b": noisy(anomalies[50:])})})
    assert other["auroc_difference"] > 0 and 0.005 < other["standard_error"] < 0.05
    assert versus_ablation({METHOD: (normal, {"a": anomalies})}) is None
