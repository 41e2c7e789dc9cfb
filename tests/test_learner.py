import numpy as np
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


def test_grad_sync_sees_each_levels_parameters():
    ep, cfg = _episode()
    seen = []
    model = MetaADModel(6, 2, hidden_dims=[16], embed_dim=8)
    learner = MetaLearner(model, cfg, torch.device("cpu"), grad_sync=lambda params: seen.append(len(params)))
    learner.step(ep)
    assert seen == [len(learner.inner_params), len(learner.outer_params)]


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
