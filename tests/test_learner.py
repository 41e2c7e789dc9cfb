import numpy as np
import pytest
import torch

from metaad_dist.config import MetaConfig
from metaad_dist.episodes.sampler import EpisodeSampler
from metaad_dist.meta.learner import MetaLearner
from metaad_dist.meta.losses import outer_loss
from metaad_dist.model.networks import MetaADModel


def _episode(seed=0):
    rng = np.random.default_rng(seed)
    fam = np.repeat(np.arange(2), 50)
    x = rng.normal(size=(100, 6)).astype(np.float32)
    cfg = MetaConfig(n_support=20, n_query=20, k_shot=3, budget=5)
    sampler = EpisodeSampler(x, fam, fam, 2, {"m": rng.normal(size=(5, 6)).astype(np.float32)}, cfg, seed)
    return sampler.episode(0), cfg


def test_outer_loss_puts_no_gradient_on_encoder():
    ep, cfg = _episode()
    model = MetaADModel(6, 2, hidden_dims=[16], embed_dim=8, use_decoder=True)
    learner = MetaLearner(model, cfg, torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        zq, zs = model.encoder(torch.as_tensor(ep.query_x)), model.encoder(torch.as_tensor(ep.shots_x))
    loss, _ = outer_loss(model, zq, torch.as_tensor(ep.query_y), zs, cfg)
    loss.backward()
    assert all(p.grad is None for p in model.inner_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    assert model.temperature.raw.grad is not None
    # and a full outer step leaves the encoder untouched while moving the head
    before = [p.detach().clone() for p in model.encoder.parameters()]
    head_before = model.head.prototypes.detach().clone()
    learner.outer_step(torch.as_tensor(ep.query_x), torch.as_tensor(ep.query_y), torch.as_tensor(ep.shots_x))
    assert all(torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))
    assert not torch.equal(head_before, model.head.prototypes)


def test_inner_step_keeps_head_fixed_when_configured():
    ep, cfg = _episode()
    cfg.inner_updates_head = False
    model = MetaADModel(6, 2, hidden_dims=[16], embed_dim=8)
    learner = MetaLearner(model, cfg, torch.device("cpu"))
    head, temp = model.head.prototypes.detach().clone(), model.temperature.raw.detach().clone()
    enc = model.encoder[0].weight.detach().clone()
    learner.inner_step(torch.as_tensor(ep.support_x), torch.as_tensor(ep.support_y))
    assert torch.equal(head, model.head.prototypes) and torch.equal(temp, model.temperature.raw)
    assert not torch.equal(enc, model.encoder[0].weight)


def test_resume_continues_the_dropout_stream_exactly():
    """4 episodes straight == 2 episodes, checkpoint, fresh process state, 2 more (dropout on)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    labels, fam = rng.integers(0, 3, 300), np.zeros(300, int)
    cfg = MetaConfig(n_support=32, n_query=32, k_shot=3, budget=5)
    sampler = EpisodeSampler(x, labels, fam, 1, {"a": rng.normal(size=(5, 8)).astype(np.float32)}, cfg, 0)

    def build():
        torch.manual_seed(0)  # as a restarted worker does before loading the checkpoint
        return MetaLearner(MetaADModel(8, 3, (16,), 8, dropout=0.2), cfg, torch.device("cpu"))

    straight = build()
    for e in range(4):
        straight.step(sampler.episode(e))
    first = build()
    for e in range(2):
        first.step(sampler.episode(e))
    state = first.state_dict()
    resumed = build()
    resumed.load_state_dict(state)
    for e in range(2, 4):
        resumed.step(sampler.episode(e))
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def _sampler(seed=0, **meta):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    labels, fam = rng.integers(0, 3, 300), np.zeros(300, int)
    budget = {f: rng.normal(size=(5, 6)).astype(np.float32) for f in ("a", "b")}
    cfg = MetaConfig(n_support=16, n_query=16, k_shot=3, budget=5, **meta)
    return EpisodeSampler(x, labels, fam, 1, budget, cfg, seed), cfg


def test_a_batch_of_episodes_steps_on_the_mean_of_their_gradients():
    """step([e0, e1, e2]) == one update per level on the mean of the three episodes' gradients."""
    import copy

    from metaad_dist.meta.losses import inner_loss

    sampler, cfg = _sampler(episodes_per_step=3, lambda_m=1.0, update_order="sequential")
    episodes = [sampler.episode(e) for e in range(3)]
    torch.manual_seed(0)
    batched = MetaLearner(MetaADModel(6, 3, (16,), 8), cfg, torch.device("cpu"))
    reference = MetaLearner(copy.deepcopy(batched.model), cfg, torch.device("cpu"))
    batched.step(episodes)

    model, t = reference.model, torch.as_tensor

    def mean_grad_step(params, opt, losses):
        grads = [torch.autograd.grad(loss, params, allow_unused=True) for loss in losses]
        for i, p in enumerate(params):
            per = [g[i] for g in grads if g[i] is not None]
            p.grad = torch.stack(per).mean(dim=0) if per else None
        opt.step()

    model.train()
    mean_grad_step(reference.inner_params, reference.inner_opt,
                   [inner_loss(model, t(e.support_x), t(e.support_y), cfg)[0] for e in episodes])

    def outer(e):
        with torch.no_grad():
            zq, zs = model.encoder(t(e.query_x)), model.encoder(t(e.shots_x))
        return outer_loss(model, zq, t(e.query_y), zs, cfg, t(e.query_x), t(e.shots_x))[0]

    mean_grad_step(reference.outer_params, reference.outer_opt, [outer(e) for e in episodes])
    for a, b in zip(batched.model.parameters(), reference.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_margin_of_stacked_episodes_is_taken_per_episode():
    from metaad_dist.meta.losses import margin_penalty

    s_normal, s_anomaly = torch.tensor([0.9, 0.9, 0.5, 0.5]), torch.tensor([0.1, 0.6])
    # episode 1 clears the margin (gap 0.8), episode 2 misses it by 0.6: mean 0.3, not the pooled 0.15
    assert float(margin_penalty(s_normal, s_anomaly, 0.5, episodes=2)) == pytest.approx(0.3)
    assert float(margin_penalty(s_normal, s_anomaly, 0.5)) == pytest.approx(0.15)


def test_step_episodes_cover_the_same_episodes_whatever_the_split():
    from metaad_dist.meta.learner import step_episodes

    for step in range(3):
        one_process = list(step_episodes(step, 4))
        two_workers = sorted([*step_episodes(step, 2, world=2, rank=0), *step_episodes(step, 2, world=2, rank=1)])
        assert one_process == two_workers == list(range(4 * step, 4 * step + 4))
    assert list(step_episodes(1, 3, world=2, rank=1)) == [7, 9, 11]  # every 2nd: the sampler's stride


def test_simultaneous_order_takes_both_levels_gradients_at_the_steps_start_in_one_sync():
    """update_order=simultaneous == each level's optimizer step on its own loss's gradient, both
    taken at the parameters the step started from, with one grad_sync call for both."""
    import copy

    from metaad_dist.meta.losses import inner_loss

    sampler, cfg = _sampler(episodes_per_step=2, lambda_m=1.0, update_order="simultaneous")
    episodes = [sampler.episode(e) for e in range(2)]
    torch.manual_seed(0)
    synced = []
    learner = MetaLearner(MetaADModel(6, 3, (16,), 8), cfg, torch.device("cpu"),
                          grad_sync=lambda grads: synced.append(len(grads)))
    start = copy.deepcopy(learner.model)
    reference = MetaLearner(copy.deepcopy(start), cfg, torch.device("cpu"))
    learner.step(episodes)
    assert synced == [len(learner.inner_params) + len(learner.outer_params)]

    model, t = reference.model, torch.as_tensor
    model.train()

    def stack(key):
        return t(np.concatenate([getattr(e, key) for e in episodes]))

    inner = inner_loss(model, stack("support_x"), stack("support_y"), cfg)[0]
    with torch.no_grad():
        zq, zs = model.encoder(stack("query_x")), model.encoder(stack("shots_x"))
    outer = outer_loss(model, zq, stack("query_y"), zs, cfg, stack("query_x"), stack("shots_x"), episodes=2)[0]
    inner_grads = torch.autograd.grad(inner, reference.inner_params, allow_unused=True)
    outer_grads = torch.autograd.grad(outer, reference.outer_params, allow_unused=True)
    for params, grads, opt in ((reference.inner_params, inner_grads, reference.inner_opt),
                               (reference.outer_params, outer_grads, reference.outer_opt)):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    for a, b in zip(learner.model.parameters(), reference.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # ... and it is not the sequential order, whose outer step sees the updated encoder (compared
    # after a second step: Adam's first step is the sign of the gradient in both)
    sequential = MetaLearner(copy.deepcopy(start), _sampler(episodes_per_step=2, lambda_m=1.0, update_order="sequential")[1],
                             torch.device("cpu"))
    sequential.step(episodes)
    more = [sampler.episode(e) for e in range(2, 4)]
    sequential.step(more)
    learner.step(more)
    assert not all(torch.allclose(a, b, atol=1e-7) for a, b in zip(sequential.model.parameters(), learner.model.parameters()))


@pytest.mark.parametrize("order, syncs", [("sequential", 4), ("simultaneous", 3)])
def test_simultaneous_order_shares_one_sync_between_the_last_inner_and_the_first_outer_update(order, syncs):
    """Two inner and two outer updates: sequential averages each level's gradients per update (4
    collectives); simultaneous joins the second inner and the first outer update (3)."""
    sampler, cfg = _sampler(inner_steps=2, outer_steps=2, update_order=order)
    levels = []
    learner = MetaLearner(MetaADModel(6, 3, (16,), 8), cfg, torch.device("cpu"), grad_sync=lambda grads: levels.append(len(grads)))
    learner.step(sampler.episode(0))
    inner, outer = len(learner.inner_params), len(learner.outer_params)
    expected = [inner, inner, outer, outer] if order == "sequential" else [inner, inner + outer, outer]
    assert len(levels) == syncs and levels == expected


def test_simultaneous_order_without_the_outer_loop_is_the_inner_step():
    import copy

    sampler, cfg = _sampler(outer_steps=0, update_order="sequential")
    episode = sampler.episode(0)
    torch.manual_seed(0)
    sequential = MetaLearner(MetaADModel(6, 3, (16,), 8), cfg, torch.device("cpu"))
    simultaneous = MetaLearner(copy.deepcopy(sequential.model), _sampler(outer_steps=0, update_order="simultaneous")[1],
                               torch.device("cpu"))
    for learner in (sequential, simultaneous):
        learner.step(episode)
    for a, b in zip(sequential.model.parameters(), simultaneous.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("settings, message", [
    ({"update_order": "parallel"}, r"^meta.update_order='parallel'; expected one of sequential, simultaneous$"),
    ({"update_order": "simultaneous", "pcgrad": True}, r"^meta.pcgrad=true needs meta.update_order=sequential "),
    ({"episodes_per_step": 0}, r"^meta.episodes_per_step=0; expected an integer >= 1$"),
    ({"episodes_per_step": 2, "pcgrad": True}, r"^meta.episodes_per_step=2 with meta.pcgrad=true"),
    ({"episodes_per_step": 2, "curriculum_families": 1}, r"^meta.episodes_per_step=2 with meta.curriculum_families=1"),
])
def test_bad_episodes_per_step_is_one_line(settings, message):
    from metaad_dist.errors import ConfigError

    _, cfg = _sampler(**settings)
    with pytest.raises(ConfigError, match=message):
        MetaLearner(MetaADModel(6, 3, (16,), 8), cfg, torch.device("cpu"))


def _head_with_trained_background(features: str):
    from metaad_dist.model.networks import PrototypeHead

    torch.manual_seed(0)
    head = PrototypeHead(8, 3, -2.0, [16], background_in_dim=6, background_features=features)
    torch.nn.init.normal_(head.background[-1].weight)  # as after outer steps (it starts at 0)
    return head


def test_a_deviation_background_scores_a_feature_raised_or_lowered_alike():
    """background_features=deviation: the background logit reads |x|, so an unseen family moving
    a feature the other way from the seen ones is not scored below normal rows for it."""
    x, z = torch.randn(50, 6), torch.randn(50, 8)
    deviation, row = _head_with_trained_background("deviation"), _head_with_trained_background("row")
    assert torch.equal(deviation(z, x), deviation(z, -x))
    assert not torch.allclose(row(z, x)[:, -1], row(z, -x)[:, -1])
    assert torch.equal(deviation(z, x), row(z, x.abs()))  # same weights: only the input differs


def test_a_checkpoint_without_background_features_rebuilds_with_the_row():
    """Models written before model.background_features have no such argument: the row, as then."""
    assert MetaADModel(6, 2, background_reads_input=True).head.deviation is False
    assert MetaADModel(6, 2, background_reads_input=True, background_features="deviation").head.deviation is True


def test_the_configured_model_reads_the_row_unless_told_the_deviation(compose):
    from metaad_dist.train.setup import model_arguments

    default = model_arguments(compose().model, in_dim=6, num_classes=2)
    deviation = model_arguments(compose("model.background_features=deviation").model, in_dim=6, num_classes=2)
    assert default["background_features"] == "row" and not MetaADModel(**default).head.deviation
    assert MetaADModel(**deviation).head.deviation
