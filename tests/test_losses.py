import math

import pytest
import torch

from metaad_dist.config import MetaConfig
from metaad_dist.meta.losses import confidence_bce, inner_loss, margin_penalty, outer_loss
from metaad_dist.model.networks import BoundedTemperature, MetaADModel


def test_confidence_bce_known_values():
    s = torch.tensor([0.5, 0.9])
    assert math.isclose(confidence_bce(s, 1.0).item(), -(math.log(0.5) + math.log(0.9)) / 2, rel_tol=1e-6)
    assert math.isclose(confidence_bce(s, 0.0).item(), -(math.log(0.5) + math.log(0.1)) / 2, rel_tol=1e-5)


def test_margin_penalty_known_values():
    normal, anomaly = torch.tensor([0.9, 0.7]), torch.tensor([0.6, 0.4])
    assert math.isclose(margin_penalty(normal, anomaly, 0.5).item(), 0.2, rel_tol=1e-6)  # 0.5 - (0.8 - 0.5)
    assert margin_penalty(normal, anomaly, 0.1).item() == 0.0


def test_temperature_is_bounded_and_starts_at_init():
    t = BoundedTemperature(1.0, 0.3, 1.05)
    assert math.isclose(t().item(), 1.0, rel_tol=1e-6)
    with torch.no_grad():
        t.raw.fill_(50.0)
    assert math.isclose(t().item(), 1.05, rel_tol=1e-5)
    with torch.no_grad():
        t.raw.fill_(-50.0)
    assert math.isclose(t().item(), 0.3, rel_tol=1e-5)


def _model_with_uniform_head(in_dim=4, k=2):
    model = MetaADModel(in_dim, k, hidden_dims=[8], embed_dim=4, head="linear")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


def test_inner_loss_known_value_for_uniform_head():
    # A zero head gives uniform softmax over K=2 classes: S = 0.5, CE = log 2, BCE(S,1) = log 2.
    model = _model_with_uniform_head()
    cfg = MetaConfig(inner_bce_weight=1.0, class_ce_weight=2.0)
    loss, _ = inner_loss(model, torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1]), cfg)
    assert math.isclose(loss.item(), 3 * math.log(2), rel_tol=1e-5)


def test_outer_loss_known_value_for_uniform_head():
    model = _model_with_uniform_head()
    cfg = MetaConfig(margin=0.5, lambda_m=0.1, lambda_t=0.0, outer_class_ce_weight=0.0)
    z = torch.randn(5, 4)
    loss, metrics = outer_loss(model, z, torch.zeros(5, dtype=torch.long), torch.randn(3, 4), cfg)
    # BCE(0.5, 1) + BCE(0.5, 0) + 0.1 * relu(0.5 - 0)
    assert math.isclose(loss.item(), 2 * math.log(2) + 0.05, rel_tol=1e-5)
    assert math.isclose(metrics["confidence_margin"].item(), 0.0, abs_tol=1e-6)


def test_prototype_head_is_distance_aware():
    """Far from every prototype the background logit wins, so confidence drops towards 0."""
    model = MetaADModel(3, 2, hidden_dims=[8], embed_dim=2, head="prototype", background_init=-2.0)
    with torch.no_grad():
        model.head.prototypes.copy_(torch.tensor([[0.0, 0.0], [3.0, 0.0]]))
    near = model.confidence_from_logits(model.logits(torch.tensor([[0.0, 0.0]])))
    far = model.confidence_from_logits(model.logits(torch.tensor([[50.0, 50.0]])))
    # at a prototype: softmax over [0, -9, -2] -> 1 / (1 + e^-9 + e^-2)
    assert math.isclose(near.item(), 1 / (1 + math.exp(-9) + math.exp(-2)), rel_tol=1e-5)
    assert far.item() < 1e-6


def test_outer_step_trains_a_background_that_reads_the_input_row():
    from metaad_dist.meta.learner import MetaLearner

    torch.manual_seed(0)
    model = MetaADModel(4, 2, hidden_dims=[8], embed_dim=3, background_hidden=[6], background_reads_input=True)
    learner = MetaLearner(model, MetaConfig(), torch.device("cpu"))
    before = [p.detach().clone() for p in model.head.background.parameters()]
    learner.outer_step(torch.randn(16, 4), torch.zeros(16, dtype=torch.long), torch.randn(4, 4) + 3)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.head.background.parameters()))
    with pytest.raises(ValueError, match="reads the input row"):
        model.head(torch.randn(2, 3))
