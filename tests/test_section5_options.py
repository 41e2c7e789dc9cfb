"""docs/method.md section 5 options: ODIN input perturbation, PCGrad, the hard-OOD curriculum."""
import numpy as np
import pytest
import torch

from metaad_dist.config import MetaConfig
from metaad_dist.episodes.sampler import EpisodeSampler
from metaad_dist.meta.curriculum import HardFamilyCurriculum
from metaad_dist.meta.learner import MetaLearner
from metaad_dist.meta.losses import inner_loss, outer_loss
from metaad_dist.meta.pcgrad import flat_grad, project_conflicting
from metaad_dist.model.networks import MetaADModel

CPU = torch.device("cpu")


def _episode(families=("a", "b", "c"), seed=0, **meta):
    rng = np.random.default_rng(seed)
    fam = np.repeat(np.arange(2), 60)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    cfg = MetaConfig(n_support=20, n_query=20, k_shot=3, budget=5, **meta)
    # family i's shots sit at distance 1 + 2i from the normal rows: "a" is the hardest
    budget = {f: (rng.normal(size=(5, 6)) + 1 + 2 * i).astype(np.float32) for i, f in enumerate(families)}
    return EpisodeSampler(x, fam, fam, 2, budget, cfg, seed), cfg


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return MetaADModel(6, 2, hidden_dims=[16], embed_dim=8, background_hidden=[8], background_reads_input=True, **kw)


# ------------------------------------------------------------------------------------ ODIN
def test_odin_perturbation_raises_confidence_and_touches_no_parameter():
    model = _model(odin_epsilon=0.05)
    x = torch.randn(64, 6)
    moved = model.perturb(x)
    assert torch.allclose((moved - x).abs(), torch.full_like(x, 0.05))  # a sign step of size eps
    assert (model.confidence(moved) > model.confidence(x)).float().mean() > 0.9
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.network_score(x), 1 - model.confidence(moved).detach())
    assert torch.equal(_model().perturb(x), x)  # eps 0: identity


def test_odin_epsilon_travels_with_the_model_arguments(compose):
    from metaad_dist.train.setup import prepare_training

    setup = prepare_training(compose("data=digits", "model=mlp_image", "model.odin_epsilon=0.01"))
    assert setup.model_args["odin_epsilon"] == 0.01
    assert setup.build_model(0).odin_epsilon == 0.01


def test_outer_loop_trains_on_perturbed_rows():
    sampler, cfg = _episode()
    ep = sampler.episode(0)
    plain, perturbed = _model(), _model(odin_epsilon=0.1)
    q, qy, s = (torch.as_tensor(a) for a in (ep.query_x, ep.query_y, ep.shots_x))
    MetaLearner(plain, cfg, CPU).outer_step(q, qy, s)
    MetaLearner(perturbed, cfg, CPU).outer_step(q, qy, s)
    assert not torch.equal(plain.head.prototypes, perturbed.head.prototypes)


# ---------------------------------------------------------------------------------- PCGrad
def test_projection_removes_only_the_conflicting_component():
    ref = torch.tensor([1.0, 0.0])
    assert torch.equal(project_conflicting(torch.tensor([1.0, 1.0]), ref), torch.tensor([1.0, 1.0]))
    out = project_conflicting(torch.tensor([-2.0, 3.0]), ref)
    assert torch.allclose(out, torch.tensor([0.0, 3.0])) and torch.dot(out, ref) == 0
    assert torch.equal(project_conflicting(torch.tensor([-1.0, 1.0]), torch.zeros(2)), torch.tensor([-1.0, 1.0]))


def test_pcgrad_step_applies_the_mean_of_projected_family_gradients():
    sampler, cfg = _episode()
    model = _model()
    warm = MetaLearner(model, cfg, CPU)
    for e in range(60):  # at first every family agrees with the inner loss; the hardest one stops agreeing
        warm.step(sampler.episode(e))
    cfg.pcgrad, cfg.outer_optimizer.name, cfg.outer_optimizer.lr = True, "sgd", 0.1
    cfg.update_order = "sequential"  # what PCGrad needs
    learner = MetaLearner(model, cfg, CPU)
    ep = sampler.episode(100)
    q, qy, s = (torch.as_tensor(a) for a in (ep.query_x, ep.query_y, ep.shots_x))
    fam, sx, sy = torch.as_tensor(ep.shots_family), torch.as_tensor(ep.support_x), torch.as_tensor(ep.support_y)

    params = learner.outer_params
    before = torch.cat([p.detach().reshape(-1) for p in params])
    reference = flat_grad(inner_loss(model, sx, sy, cfg)[0], params)
    with torch.no_grad():
        zq, zs = model.encoder(q), model.encoder(s)
    grads = [flat_grad(outer_loss(model, zq, qy, zs[fam == j], cfg, q, s[fam == j])[0], params) for j in range(3)]
    conflicts = [bool(torch.dot(g, reference) < 0) for g in grads]
    assert any(conflicts) and not all(conflicts), "the test needs one conflicting family and one agreeing"
    projected = torch.stack([project_conflicting(g, reference) for g in grads]).mean(dim=0)
    encoder = [p.detach().clone() for p in model.encoder.parameters()]

    metrics = learner.outer_step(q, qy, s, fam, (sx, sy))
    after = torch.cat([p.detach().reshape(-1) for p in params])
    assert torch.allclose(after, before - 0.1 * projected, atol=1e-6)
    assert not torch.allclose(after, before - 0.1 * torch.stack(grads).mean(dim=0), atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(encoder, model.encoder.parameters()))
    assert float(metrics["pcgrad_conflicts"]) == pytest.approx(sum(conflicts) / 3)


# ------------------------------------------------------------------------------ curriculum
def test_curriculum_prefers_low_margin_families_and_is_seeded():
    cur = HardFamilyCurriculum(families=1, temperature=0.5, momentum=0.5, seed=3)
    cur.observe({"a": 0.1, "b": 0.5, "c": 0.9})
    cur.observe({"a": 0.3, "b": 0.5, "c": 0.9})
    assert cur.margins == pytest.approx({"a": 0.2, "b": 0.5, "c": 0.9})
    p = cur.probabilities(["a", "b", "c"])
    assert p[0] > p[1] > p[2] and p.sum() == pytest.approx(1.0)
    picks = [cur.choose(["a", "b", "c"], e) for e in range(300)]
    counts = {f: sum(f in pk for pk in picks) for f in "abc"}
    assert counts["a"] > counts["b"] > counts["c"] > 0
    assert picks == [cur.choose(["a", "b", "c"], e) for e in range(300)]  # a function of (seed, episode, margins)
    assert HardFamilyCurriculum(5, 0.1, 0.5, 3).choose(["a", "b"], 0) == ["a", "b"]


def test_curriculum_at_a_tiny_temperature_still_picks_enough_families():
    """exp() underflows to 0 for all but the hardest family; picking 2 without replacement must not fail."""
    cur = HardFamilyCurriculum(families=2, temperature=0.001, momentum=0.5, seed=3)
    cur.observe({"a": -0.2, "b": 0.6, "c": 0.7, "d": float("nan")})
    picks = [cur.choose(["a", "b", "c", "d"], e) for e in range(20)]
    assert all(len(p) == 2 and "a" in p for p in picks)  # the hardest family every time


@pytest.mark.parametrize("order", ["simultaneous", "sequential"])
def test_learner_curriculum_feeds_only_the_picked_families_and_checkpoints_its_margins(order):
    sampler, cfg = _episode(curriculum_families=1, curriculum_temperature=0.05, update_order=order)
    learner = MetaLearner(_model(), cfg, CPU, seed=1)
    seen = []
    rows = learner._outer_rows

    def spy(episodes):  # the rows the outer update is given
        out = rows(episodes)
        seen.append(sorted(set(out[3].tolist())))
        return out

    learner._outer_rows = spy
    for e in range(30):
        learner.step(sampler.episode(e))
    assert all(len(f) == 1 for f in seen)
    margins = learner.curriculum.margins
    assert set(margins) == {"a", "b", "c"} and margins["a"] < margins["c"]
    assert sum(f == [0] for f in seen) > sum(f == [2] for f in seen)  # the hardest family most often

    state = learner.state_dict()
    restored = MetaLearner(_model(), cfg, CPU, seed=1)
    restored.load_state_dict(state)
    assert restored.curriculum.margins == margins


@pytest.mark.parametrize("override, message", [
    ("model.odin_epsilon=-0.1", "model.odin_epsilon=-0.1; expected a number >= 0 (0 switches it off)"),
    ("meta.curriculum_families=-1", "meta.curriculum_families=-1; expected an integer >= 0 (0 switches it off)"),
    ("meta.curriculum_temperature=0", "meta.curriculum_temperature=0.0; expected a number > 0"),
    ("meta.curriculum_momentum=1", "meta.curriculum_momentum=1.0; expected a number in [0, 1)"),
    ("model.temperature_max=1.0", "model.temperature_init=1.0 with temperature_min=0.3, temperature_max=1.0; "
                                  "expected 0 < temperature_min < temperature_init < temperature_max"),
])
def test_bad_option_settings_are_one_line_errors(compose, override, message):
    from metaad_dist.errors import ConfigError
    from metaad_dist.train.setup import prepare_training

    with pytest.raises(ConfigError) as err:
        prepare_training(compose("data=digits", "model=mlp_image", override))
    assert str(err.value) == message


def test_curriculum_needs_every_meta_family_in_each_episode(compose):
    from metaad_dist.errors import ConfigError
    from metaad_dist.train.setup import prepare_training

    with pytest.raises(ConfigError, match=r"meta.curriculum_families=2 with meta.meta_per_episode=1; expected meta.meta_per_episode=0"):
        prepare_training(compose("data=digits", "model=mlp_image", "meta.curriculum_families=2", "meta.meta_per_episode=1"))
