"""Leave-one-meta-family-out choice of the fusion weights (train/fusion.py)."""
import numpy as np
import pytest

from metaad_dist.eval.metrics import detection_metrics
from metaad_dist.train.fusion import HeldOutFold, choose_weights, finish_training, fold_families
from metaad_dist.train.setup import fusion_candidates


def fold(rng, shots_shift):
    """Evidence rows (network, knn, isolation): only the components in `shots_shift` separate the shots."""
    normal = rng.exponential(size=(3, 200))
    shots = rng.exponential(size=(3, 10)) + np.asarray(shots_shift, dtype=float)[:, None]
    return HeldOutFold("f", normal, shots)


def test_choose_weights_prefers_the_candidate_that_ranks_held_out_shots_first():
    rng = np.random.default_rng(0)
    folds = [fold(rng, [0.0, 4.0, 4.0]) for _ in range(3)]  # the network does not see these families
    candidates = [[1, 1, 1], [1, 0.5, 0], [0, 1, 1]]
    choice = choose_weights(candidates, folds)
    means = choice.aurocs.mean(axis=1)
    assert choice.chosen == 2 and means[2] == max(means) and means[1] < means[0] < means[2]
    assert choice.aurocs.shape == (3, 3) and choice.families == ["f"] * 3
    network_led = [fold(rng, [4.0, 0.0, 0.0]) for _ in range(3)]
    assert choose_weights(candidates, network_led).chosen == 1


def test_ties_go_to_the_first_candidate_and_missing_components_are_ignored():
    rng = np.random.default_rng(1)
    two = HeldOutFold("f", rng.exponential(size=(2, 50)), rng.exponential(size=(2, 5)) + 100.0)  # no forest
    choice = choose_weights([[1, 1, 1], [1, 1, 0]], [two])
    assert choice.chosen == 0 and choice.aurocs.tolist() == [[1.0], [1.0]]


def test_fold_families_are_a_seeded_subset():
    meta = ["a", "b", "c", "d", "e", "f"]
    picked = fold_families(meta, 4, seed=3)
    assert picked == fold_families(meta, 4, seed=3) and len(picked) == 4 and set(picked) <= set(meta)
    assert fold_families(meta[:2], 4, seed=0) == ["a", "b"]


def fit_recorder(calls):
    from metaad_dist.train.local import fit_network_only

    def fit(cfg, setup):
        calls.append((tuple(setup.roles.meta), tuple(setup.roles.held_out), sorted(setup.view.budget_x)))
        return fit_network_only(cfg, setup)

    return fit


@pytest.mark.parametrize("candidates, trains, extra", [
    ("[[1,1,1],[1,0.5,0],[0,1,1]]", 2, ["model.memory_reconstruction=none"]),
    ("[[0,1,1]]", 0, ["model.memory_reconstruction=none"]),
    # With the reconstruction evidence: the memory's model is fitted once, on the full run.
    ("[[1,0.5,0,0],[0,1,1,1]]", 2, ["model.memory_reconstruction=autoencoder", "model.memory_autoencoder_hidden=[16,8]",
                                    "model.memory_autoencoder_epochs=3"]),
    ("[[1,0.5,0,0],[0,1,1,1]]", 2, ["model.memory_reconstruction=pca"]),
])
def test_finish_training_holds_out_each_meta_family_in_turn(compose, candidates, trains, extra, capsys):
    from metaad_dist.train.local import fit_network
    from metaad_dist.train.setup import prepare_training

    cfg = compose(
        "data=digits", "model=mlp", "meta.episodes=20", "trainer.validate_every=1000", "quiet=false",
        f"model.fusion_candidates={candidates}", "model.memory_rows=300", "model.memory_calibration_rows=100", *extra,
    )
    setup = prepare_training(cfg)
    model, _ = fit_network(cfg, setup, log=lambda _: None)
    calls = []
    finish_training(cfg, setup, model, fit_recorder(calls))
    weights = model.memory.weights.tolist()
    assert weights in fusion_candidates(cfg.model)
    choice = model.memory.choice  # what the benchmark records beside the weights
    assert (choice is None) == (trains == 0)
    if choice is not None:
        assert choice.aurocs.shape == (len(choice.candidates), trains) and weights == choice.candidates[choice.chosen]
    assert (model.memory.reconstruction is not None) == ("model.memory_reconstruction=none" not in extra)
    assert len(calls) == trains
    meta = list(cfg.data.meta)
    for (sub_meta, sub_held_out, budget_families), family in zip(calls, meta):
        # The held-out-family network never trains on that family's shots nor on the real held-out ones.
        assert family not in sub_meta and family in sub_held_out and family not in budget_families
        assert set(cfg.data.held_out) <= set(sub_held_out)
    shown = capsys.readouterr().out
    assert ("[fusion] leave-one-family-out over" in shown) == (trains > 0)


def test_one_se_the_network_led_candidate_must_win_consistently_to_be_chosen():
    from metaad_dist.train.fusion import pick_candidate

    candidates = [[1, 0.5, 0, 0], [0, 1, 1, 1]]
    # Ahead on average, but not on every fold: within one standard error, the shot-free one wins.
    assert pick_candidate(candidates, np.array([[0.99, 0.95, 0.97], [0.96, 0.97, 0.96]]), "one_se") == 1
    # Ahead on every fold by more than the spread of the gaps: the network-led one wins.
    assert pick_candidate(candidates, np.array([[0.93, 0.92, 0.97], [0.84, 0.83, 0.92]]), "one_se") == 0
    # The shot-free candidate is chosen when it is best, however the others do.
    assert pick_candidate(candidates, np.array([[0.90, 0.91], [0.95, 0.99]]), "one_se") == 1
    # Among equally good candidates with the same network weight, the higher mean; one fold: best mean.
    assert pick_candidate([[0, 1, 1, 0], [0, 1, 1, 1]], np.array([[0.95, 0.96], [0.96, 0.96]]), "one_se") == 1
    assert pick_candidate(candidates, np.array([[0.97], [0.96]]), "one_se") == 0


@pytest.mark.parametrize("network_gap, gap_se, chosen", [
    (0.005, 0.01, 1),  # a lead within its measurement error: the shot-free candidate
    (0.005, 0.001, 0),  # the same lead measured precisely is real
    (0.05, 0.01, 0),  # a clear lead
    (-0.02, 0.01, 1),  # the shot-free candidate is chosen when it is best
])
def test_delong_the_network_must_lead_by_more_than_the_error_of_the_difference(network_gap, gap_se, chosen):
    from metaad_dist.train.fusion import pick_candidate

    one_class = np.array([0.95, 0.90, 0.97])
    aurocs = np.stack([one_class + network_gap, one_class])
    assert pick_candidate([[1, 0.5, 0, 0], [0, 1, 1, 1]], aurocs, "delong", lambda i, j: gap_se) == chosen
    # The order of the candidates does not matter, only their network weights.
    assert pick_candidate([[0, 1, 1, 1], [1, 0.5, 0, 0]], aurocs[::-1], "delong", lambda i, j: gap_se) == 1 - chosen
    # The best mean alone takes any lead.
    assert pick_candidate([[1, 0.5, 0, 0], [0, 1, 1, 1]], aurocs, "best_mean") == (0 if network_gap > 0 else 1)


def test_auroc_difference_variance_matches_the_spread_of_measured_differences():
    from metaad_dist.eval.metrics import auroc_difference_variance

    # Two scores of the same rows sharing a common part (as fused evidences share components):
    # the difference of their AUROCs over fresh samples of 10 shots and 300 normal rows.
    rng = np.random.default_rng(0)

    def sample():
        normal, shots = rng.normal(size=300), rng.normal(1.5, 1.0, size=10)
        noise_n, noise_s = rng.normal(size=(2, 300)), rng.normal(size=(2, 10))
        return (normal + 0.5 * noise_n[0], shots + 0.5 * noise_s[0]), (normal + 0.8 * noise_n[1], shots + 0.8 * noise_s[1])

    differences, estimates, auroc_a, auroc_b = [], [], [], []
    for _ in range(600):
        a, b = sample()
        auroc_a.append(detection_metrics(*a)["auroc"])
        auroc_b.append(detection_metrics(*b)["auroc"])
        differences.append(auroc_a[-1] - auroc_b[-1])
        estimates.append(auroc_difference_variance(*a, *b))
    assert np.sqrt(np.mean(estimates)) == pytest.approx(np.std(differences), rel=0.15)
    # Paired: the difference varies much less than two independent AUROCs' would (0.056 vs 0.097).
    assert np.std(differences) < 0.7 * np.sqrt(np.var(auroc_a) + np.var(auroc_b))
    a, _ = sample()
    assert auroc_difference_variance(*a, *a) == 0.0


def test_the_best_mean_rule_takes_the_best_mean_whatever_the_spread():
    rng = np.random.default_rng(2)
    # The network separates the shots of two folds perfectly and misses the third: best mean,
    # not consistently best.
    folds = [fold(rng, [9.0, 0.7, 0.7]), fold(rng, [9.0, 0.7, 0.7]), fold(rng, [0.0, 0.7, 0.7])]
    candidates = [[1, 0, 0], [0, 1, 1]]
    by_mean = choose_weights(candidates, folds, "best_mean")
    means = by_mean.aurocs.mean(axis=1)
    assert by_mean.chosen == 0 and means[0] > means[1]
    assert choose_weights(candidates, folds, "one_se").chosen == 1


def test_a_fold_setup_derived_from_the_run_equals_one_built_afresh(compose):
    """fold_network no longer re-reads the data and refits scaler and k-means per fold: the
    derived setup gives the same episodes, budget pools and model as `build_setup`."""
    import dataclasses

    from omegaconf import OmegaConf

    from metaad_dist.train.fusion import setup_without
    from metaad_dist.train.setup import build_setup, prepare_training

    cfg = compose("data=digits", "model=mlp", "model.memory_rows=300", "model.memory_calibration_rows=100")
    setup = prepare_training(cfg)
    family = cfg.data.meta[0]
    roles = dataclasses.replace(setup.roles, meta=tuple(f for f in setup.roles.meta if f != family),
                                held_out=setup.roles.held_out + (family,))
    sub_cfg = OmegaConf.merge(cfg, {"model": {"memory_rows": 0}})
    derived, built = setup_without(sub_cfg, setup, roles), build_setup(sub_cfg, setup.source, roles)
    assert derived.model_args == built.model_args and derived.roles == built.roles
    assert sorted(derived.view.budget_x) == sorted(built.view.budget_x) and family not in derived.view.budget_x
    for f in built.view.budget_x:
        assert np.array_equal(derived.view.budget_row_ids[f], built.view.budget_row_ids[f])
    for e in range(6):
        a, b = derived.sampler.episode(e), built.sampler.episode(e)
        assert a.meta_families == b.meta_families and family not in a.meta_families
        for key in ("support_x", "support_y", "query_x", "query_y", "shots_x", "shots_family"):
            assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert len(derived.memory_x) == len(built.memory_x) == 0
