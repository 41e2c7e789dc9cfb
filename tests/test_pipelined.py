"""meta.update_order=pipelined: each joint step's gradients are applied one step later, so that
their collective overlaps the next step (MetaLearner._swap_pending)."""
import copy
import io

import numpy as np
import torch

from metaad_dist.config import MetaConfig, OptimizerConfig
from metaad_dist.episodes.sampler import EpisodeSampler
from metaad_dist.meta.learner import MetaLearner
from metaad_dist.model.networks import MetaADModel

CPU = torch.device("cpu")


def _sampler(**meta):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    labels, fam = rng.integers(0, 3, 300), np.zeros(300, int)
    budget = {f: rng.normal(size=(5, 6)).astype(np.float32) for f in ("a", "b")}
    cfg = MetaConfig(n_support=16, n_query=16, k_shot=3, budget=5, episodes_per_step=2, **meta)
    return EpisodeSampler(x, labels, fam, 1, budget, cfg, 0), cfg


def _params(learner: MetaLearner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.parameters()]


def test_each_step_applies_the_previous_steps_gradients():
    """With plain SGD (no optimizer state): step 1 changes nothing, step 2 takes simultaneous's
    first update, and step 3 adds the update of step 2's episodes taken at the *initial*
    parameters (where step 2 computed them), not at the parameters step 2 ended with."""
    sgd = {"inner_optimizer": OptimizerConfig("sgd", lr=0.05), "outer_optimizer": OptimizerConfig("sgd", lr=0.05)}
    sampler, cfg = _sampler(update_order="pipelined", **sgd)
    _, simultaneous = _sampler(update_order="simultaneous", **sgd)
    steps = [[sampler.episode(2 * s), sampler.episode(2 * s + 1)] for s in range(3)]
    torch.manual_seed(0)
    start = MetaADModel(6, 3, (16,), 8)
    pipelined = MetaLearner(copy.deepcopy(start), cfg, CPU)

    pipelined.step(steps[0])
    assert all(torch.equal(a, b) for a, b in zip(_params(pipelined), start.parameters()))
    pipelined.step(steps[1])
    reference = MetaLearner(copy.deepcopy(start), simultaneous, CPU)
    reference.step(steps[0])
    after_one = _params(pipelined)
    assert all(torch.equal(a, b) for a, b in zip(after_one, reference.model.parameters()))

    pipelined.step(steps[2])
    at_start = MetaLearner(copy.deepcopy(start), simultaneous, CPU)
    at_start.step(steps[1])  # step 2's update, taken at the initial parameters
    for p, one, moved, initial in zip(pipelined.model.parameters(), after_one, at_start.model.parameters(),
                                      start.parameters()):
        torch.testing.assert_close(p.detach(), one + (moved.detach() - initial.detach()), rtol=0, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(pipelined.model.parameters(), after_one))


def test_the_collective_of_a_step_is_waited_for_in_the_next():
    """A grad_sync with `start` (GradientAverager's shape): started once per step with every
    present gradient, and waited for only when the next step needs the average."""
    sampler, cfg = _sampler(update_order="pipelined")
    events = []

    class Spy:
        def __call__(self, grads):
            raise AssertionError("pipelined steps start their collective, they do not call it")

        def start(self, grads):
            step = sum(e[0] == "start" for e in events)
            events.append(("start", step, len(grads)))
            return lambda: events.append(("wait", step))

    torch.manual_seed(0)
    learner = MetaLearner(MetaADModel(6, 3, (16,), 8), cfg, CPU, grad_sync=Spy())
    for s in range(3):
        learner.step([sampler.episode(2 * s), sampler.episode(2 * s + 1)])
    n = len(learner.inner_params) + len(learner.outer_params)
    assert events == [("start", 0, n), ("start", 1, n), ("wait", 0), ("start", 2, n), ("wait", 1)]


def test_a_checkpoint_carries_the_pending_gradients_and_resumes_bit_identical():
    """4 steps straight == 2 steps, state through torch.save / weights_only load, 2 more: the
    gradients step 3 applies were taken in step 2, before the checkpoint."""
    sampler, cfg = _sampler(update_order="pipelined")
    steps = [[sampler.episode(2 * s), sampler.episode(2 * s + 1)] for s in range(4)]

    def build():
        torch.manual_seed(0)
        return MetaLearner(MetaADModel(6, 3, (16,), 8), cfg, CPU)

    straight = build()
    for batch in steps:
        straight.step(batch)
    first = build()
    for batch in steps[:2]:
        first.step(batch)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["pending_grads"] and all(g is None or isinstance(g, torch.Tensor) for g in state["pending_grads"])
    resumed = build()
    resumed.load_state_dict(state)
    for batch in steps[2:]:
        resumed.step(batch)
    assert all(torch.equal(a, b) for a, b in zip(straight.model.parameters(), resumed.model.parameters()))
    # without the pending gradients the resumed run would differ
    lost = build()
    lost.load_state_dict({k: v for k, v in state.items() if k != "pending_grads"})
    for batch in steps[2:]:
        lost.step(batch)
    assert any(not torch.equal(a, b) for a, b in zip(straight.model.parameters(), lost.model.parameters()))
