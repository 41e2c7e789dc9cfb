"""Ray Train meta-training (issue 5): 2 CPU workers with gloo on the shared local Ray instance.

Equivalence with one process averaging the same episodes, resume after a killed worker with
checkpoints on a real S3 server, resume by rerunning the same run name, and one-line errors.
"""
from __future__ import annotations

import io
import os
import math
import socket
import time

import pytest
import torch
from omegaconf import OmegaConf

from conftest import in_two_gloo_processes, log_line_inputs, ray_files_containing

from metaad_dist.cli import compose_config, main
from metaad_dist.data.storage import open_location
from metaad_dist.errors import ConfigError, UserError
from metaad_dist.meta.learner import MetaLearner
from metaad_dist.meta.losses import inner_loss, outer_loss
from metaad_dist.train import shared_memory_sum
from metaad_dist.train.artifacts import load_run
from metaad_dist.train.checkpoint import STATE_FILE, read_state, write_state
from metaad_dist.train.commands import run_location
from metaad_dist.train.fusion import finish_training
from metaad_dist.train.local import crossed, fit_network_only
from metaad_dist.train.ray_trainer import train_ray
from metaad_dist.train.ray_worker import FAULT_ENV
from metaad_dist.train.setup import configure_torch, prepare_training

WORKERS = 2
EPISODES = 12
# Small and quick, but with two inner and two outer steps per episode, a warm-up without the
# outer loop and gradient clipping, so every part of the averaged update is exercised; in the
# sequential order, which averaged_reference re-enacts (the simultaneous one has its own test).
SMALL = [
    "data=digits",
    "trainer=ray",
    f"trainer.num_workers={WORKERS}",
    f"meta.episodes={EPISODES}",
    "meta.n_support=64",
    "meta.n_query=64",
    "meta.inner_steps=2",
    "meta.outer_steps=2",
    "meta.update_order=sequential",
    "meta.warmup_episodes=2",
    "meta.inner_optimizer.grad_clip=5.0",
    "model.hidden_dims=[32]",
    "model.embed_dim=16",
    "trainer.checkpoint_every=4",
    "trainer.log_every=4",
    "trainer.validate_every=6",
    "trainer.keep_checkpoints=2",
    "trainer.max_failures=1",
    "quiet=true",
]
TOLERANCE = 1e-5


def _averaged_update(params, opt, clip: float, losses) -> None:
    """One optimizer step on the mean of per-episode gradients (what the all-reduce computes)."""
    total = [None] * len(params)
    for loss in losses:
        grads = torch.autograd.grad(loss(), params, allow_unused=True)
        total = [g if t is None else (t if g is None else t + g) for t, g in zip(total, grads)]
    for p, g in zip(params, total):
        p.grad = None if g is None else g / len(losses)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def averaged_reference(cfg, num_workers: int) -> dict[str, torch.Tensor]:
    """One process, per step: average the gradients of episodes s*W .. s*W+W-1, then step.

    Mirrors MetaLearner.step: `inner_steps` inner updates, then (after the warm-up)
    `outer_steps` outer updates on frozen features, each on the W-episode mean gradient. The
    fusion folds are trained like the run's network, W episodes per step.
    """
    configure_torch(cfg.trainer)
    setup = prepare_training(cfg)
    learner = MetaLearner(setup.build_model(cfg.seed), cfg.meta, torch.device("cpu"))
    model, meta = learner.model, cfg.meta
    model.train()
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    i64 = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    for s in range(math.ceil(meta.episodes / num_workers)):
        eps = [setup.sampler.episode(s * num_workers + r) for r in range(num_workers)]
        for _ in range(meta.inner_steps):
            _averaged_update(learner.inner_params, learner.inner_opt, meta.inner_optimizer.grad_clip, [
                (lambda ep=ep: inner_loss(model, f32(ep.support_x), i64(ep.support_y), meta)[0]) for ep in eps
            ])
        if s * num_workers >= meta.warmup_episodes:
            for _ in range(meta.outer_steps):
                def outer(ep):
                    with torch.no_grad():
                        zq, zs = model.encoder(f32(ep.query_x)), model.encoder(f32(ep.shots_x))
                    return outer_loss(model, zq, i64(ep.query_y), zs, meta, f32(ep.query_x), f32(ep.shots_x))[0]

                _averaged_update(learner.outer_params, learner.outer_opt, meta.outer_optimizer.grad_clip, [
                    (lambda ep=ep: outer(ep)) for ep in eps
                ])
    model.eval()
    # The normal memory and its fusion weights, as the trainers fill and choose them.
    finish_training(OmegaConf.merge(cfg, {"meta": {"episodes_per_step": num_workers}}), setup, model, fit_network_only)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def trained_state(cfg) -> dict[str, torch.Tensor]:
    trained, _ = load_run(run_location(cfg))
    return trained.model.state_dict()


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tmp_path_factory):
    """`metaad train trainer=ray` end to end, through the CLI, into a local folder."""
    root = tmp_path_factory.mktemp("ray-runs")
    overrides = [*SMALL, f"storage.root={root}", "run=straight"]
    assert main(["train", *overrides]) == 0
    cfg = compose_config(overrides)
    return cfg, trained_state(cfg)


def test_two_workers_equal_one_process_averaging_two_episodes(uninterrupted):
    cfg, params = uninterrupted
    reference = averaged_reference(cfg, WORKERS)
    assert max_difference(params, reference) < TOLERANCE
    # and the run really moved away from its initialisation
    torch.manual_seed(cfg.seed)
    initial = prepare_training(cfg).build_model(cfg.seed).state_dict()
    assert max_difference(params, initial) > 1e-3

    metrics = open_location(str(cfg.storage.root)).child("straight")
    import json

    m = json.loads(metrics.read_bytes("metrics.json"))
    assert m["trainer"]["num_workers"] == WORKERS and m["trainer"]["backend"] == "gloo"
    # auto sums through shared memory on one x86-64 machine (train/shared_memory_sum.py)
    assert m["trainer"]["grad_collective"] == ("shared_memory" if shared_memory_sum.supported() else "all_gather")
    assert m["episodes"] == m["trainer"]["episodes_trained"] == cfg.meta.episodes
    assert [h["episode"] for h in m["history"]] == [4, 6, 8, 12]  # log/checkpoint every 4, validate every 6
    assert all(h["param_spread"] == 0.0 for h in m["history"])  # identical parameters on every worker
    assert 0 < m["trainer"]["drawn_ahead_fraction"] < 1  # episodes drawn during the gradient collective
    # digits has two meta families, so two fusion folds, each trained once; rank 0 fills the
    # memory first, so worker 1 starts on the queue first
    folds = m["trainer"]["fusion"]["folds_by_worker"]
    assert sorted(sum(folds, [])) == ["5", "6"] and folds[1]
    assert all(
        k in m["final"]
        for k in ("inner_loss", "outer_loss", "confidence_margin", "temperature", "episodes_per_s",
                  "sampler_wait_fraction", "val_auroc")
    )


def test_two_workers_train_the_fusion_folds_in_parallel_as_one_process_would(ray_local, compose, tmp_path):
    """W=2 workers x E=2 episodes per step, four meta families: the workers share the four
    fusion folds (each trained exactly once, from a queue) and report them, and the run ends
    with the network, memory and fusion weights of one process training 4 episodes per step."""
    meta = ["data.meta=[5,6,7,8]", "data.validation=[]", "data.held_out=[9]", "meta.episodes_per_step=2"]
    cfg = compose(*SMALL, *meta, f"storage.root={tmp_path}", "run=folds")
    result = train_ray(cfg)
    fusion = result.metrics["trainer"]["fusion"]
    trained = fusion["folds_by_worker"]
    assert sorted(sum(trained, [])) == ["5", "6", "7", "8"] and trained[1]  # each fold once, worker 1 busy
    assert len(fusion["fold_seconds_by_worker"]) == 2
    assert result.metrics["trainer"]["episodes_per_step"] == 4 and result.metrics["episodes"] == EPISODES
    assert result.metrics["trainer"]["worker_niceness"] == 0  # trainer.worker_niceness, not Ray's 15
    from metaad_dist.train.local import train_local

    local = [o for o in SMALL if not o.startswith("trainer=")]
    one = train_local(compose(*local, *meta, "meta.episodes_per_step=4"), log=lambda _: None)
    ray_state, one_state = trained_state(cfg), one.trained.model.state_dict()
    assert max_difference(ray_state, one_state) < TOLERANCE
    assert ray_state["memory.weights"].tolist() == one_state["memory.weights"].tolist()
    assert one.trained.model.memory.choice.families == ["5", "6", "7", "8"]  # four folds really chosen from


def test_simultaneous_order_under_two_workers_equals_one_process(ray_local, compose, tmp_path):
    """meta.update_order=simultaneous (two inner and two outer updates: the second inner and the
    first outer one share a collective): W=2 workers x E=2 episodes end where one process stepping
    on 4 episodes ends."""
    order = ["meta.update_order=simultaneous", "meta.episodes_per_step=2",
             "model.fusion_candidates=[[1,1,1]]"]  # one candidate: no fusion retraining (not under test)
    cfg = compose(*SMALL, *order, f"storage.root={tmp_path}", "run=simultaneous")
    history = train_ray(cfg).metrics["history"]
    assert all(h["param_spread"] == 0.0 for h in history)
    from metaad_dist.train.local import train_local

    local = [o for o in SMALL if not o.startswith("trainer=")]
    one = train_local(compose(*local, *order, "meta.episodes_per_step=4"), log=lambda _: None)
    assert max_difference(trained_state(cfg), one.trained.model.state_dict()) < TOLERANCE


def test_killed_worker_resumes_from_s3_checkpoint(uninterrupted, compose, s3, monkeypatch, tmp_path):
    """A worker dies after 6 episodes; Ray restarts the group, which resumes from episode 4 on S3."""
    _, expected = uninterrupted
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(FAULT_ENV, f"6:{marker}")
    overrides = [*SMALL, f"storage.root={s3.uri('runs')}", f"storage.endpoint_url={s3.endpoint_url}", "run=killed"]
    cfg = compose(*overrides)
    result = train_ray(cfg)
    assert marker.exists()  # the first attempt really died
    assert result.metrics["trainer"]["resumed_at_episode"] == 4
    assert result.location_uri == s3.uri("runs", "killed")
    assert max_difference(trained_state(cfg), expected) < TOLERANCE
    keys = s3.keys("runs/killed/")
    checkpoints = sorted({k.split("/")[2] for k in keys if k.split("/")[2].startswith("checkpoint_0")})
    assert checkpoints == ["checkpoint_000000008", "checkpoint_000000012"]  # keep_checkpoints=2
    assert "runs/killed/checkpoint_000000012/state.pt" in keys
    assert {"runs/killed/model.pt", "runs/killed/config.yaml", "runs/killed/metrics.json"} <= set(keys)
    assert ray_files_containing(s3.server.secret_key) == []  # the workers' keys are in no Ray log

    # `metaad evaluate` reads the run from S3 unchanged
    monkeypatch.delenv(FAULT_ENV)
    assert main(["evaluate", *overrides, "eval.baselines=[]"]) == 0
    assert "runs/killed/report/metrics.json" in s3.keys("runs/killed/report/")


def test_rerun_with_the_same_name_resumes(uninterrupted, compose, tmp_path):
    _, expected = uninterrupted
    first = compose(*SMALL, f"storage.root={tmp_path}", "run=grown", "meta.episodes=6")
    assert train_ray(first).metrics["trainer"]["episodes_trained"] == 6
    second = compose(*SMALL, f"storage.root={tmp_path}", "run=grown")
    result = train_ray(second)
    assert result.metrics["trainer"]["resumed_at_episode"] == 6
    assert [h["episode"] for h in result.metrics["history"]][:3] == [4, 6, 8]  # history carried over
    assert max_difference(trained_state(second), expected) < TOLERANCE


def test_section5_options_resume_exactly_under_two_workers(ray_local, compose, tmp_path):
    """PCGrad, the hard-OOD curriculum and ODIN switched on. The curriculum's margins are averaged
    over workers and checkpointed, so a run stopped at episode 6 and rerun ends where an unbroken
    run ends (unsynchronised margins would differ on worker 1 and change its draws on resume)."""
    options = [*SMALL, "meta.pcgrad=true", "meta.curriculum_families=1", "model.odin_epsilon=0.01",
               "model.fusion_candidates=[[1,1,1]]",  # one candidate: no fusion retraining (not under test)
               f"storage.root={tmp_path}"]
    straight = compose(*options, "run=straight")
    history = train_ray(straight).metrics["history"]
    assert all(h["param_spread"] == 0.0 and h["curriculum_spread"] == 0.0 for h in history)
    train_ray(compose(*options, "run=grown", "meta.episodes=6"))
    resumed = compose(*options, "run=grown")
    assert train_ray(resumed).metrics["trainer"]["resumed_at_episode"] == 6
    assert max_difference(trained_state(resumed), trained_state(straight)) < TOLERANCE
    state = read_state((tmp_path / "straight" / "checkpoint_000000012" / STATE_FILE).read_bytes(), "ckpt")
    margins = state["learner"]["curriculum"]["margins"]
    assert sorted(margins) == sorted(straight.data.meta) and len(set(margins.values())) == len(margins)
    trained, _ = load_run(run_location(straight))
    assert trained.model.odin_epsilon == 0.01  # scoring perturbs too


class ProcessWatch:
    """Polls this process and all its descendants (the local Ray instance and its workers) while a
    block runs: the sockets they listen on and the Ray Train worker processes that appear."""

    def __init__(self):
        import psutil

        self.psutil = psutil
        self.listening: dict[tuple[str, int], str] = {}
        self.workers: set[int] = set()
        self.before = {p.pid for p in self._tree()}
        self._stop = False

    def _tree(self):
        me = self.psutil.Process()
        return [me, *me.children(recursive=True)]

    def _poll(self) -> None:
        for proc in self._tree():
            try:
                title = " ".join(proc.cmdline()[:1])
                for c in proc.net_connections(kind="inet"):
                    if c.status == self.psutil.CONN_LISTEN:
                        self.listening[(c.laddr.ip, c.laddr.port)] = title
                if "RayTrainWorker" in title and proc.pid not in self.before:
                    self.workers.add(proc.pid)
            except self.psutil.Error:
                pass

    def __enter__(self):
        import threading

        def loop():
            while not self._stop:
                self._poll()
                time.sleep(0.1)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()

    def beyond_loopback(self) -> dict:
        import ipaddress

        def loopback(ip: str) -> bool:
            a = ipaddress.ip_address(ip.split("%")[0])
            return a.is_loopback or bool(getattr(a, "ipv4_mapped", None) and a.ipv4_mapped.is_loopback)

        return {k: v for k, v in self.listening.items() if not loopback(k[0])}


def test_no_socket_of_a_two_worker_run_listens_beyond_loopback(ray_local, compose, tmp_path):
    """torch's TCPStore listens on every interface whatever host it is given; the rendezvous store
    (ray_backend.BoundTorchConfig) and gloo's pair sockets must stay on 127.0.0.1."""
    with ProcessWatch() as watch:
        result = train_ray(compose(*SMALL, f"storage.root={tmp_path}", "run=sockets", "meta.episodes=4"))
    assert result.metrics["trainer"]["num_workers"] == WORKERS
    assert len(watch.workers) == WORKERS and watch.listening  # it really watched the workers
    assert any("RayTrainWorker" in who for who in watch.listening.values())
    assert watch.beyond_loopback() == {}


def test_corrupt_checkpoint_is_one_clear_error(ray_local, compose, tmp_path):
    """Deterministic: it fails at once, without the trainer.max_failures=2 group restarts."""
    overrides = [*SMALL, f"storage.root={tmp_path}", "run=corrupt", "trainer.max_failures=2"]
    train_ray(compose(*overrides, "meta.episodes=2"))
    (tmp_path / "corrupt" / "checkpoint_000000002" / STATE_FILE).write_bytes(b"not a checkpoint")
    with ProcessWatch() as watch:
        with pytest.raises(UserError, match=r"checkpoint_000000002: corrupt checkpoint") as err:
            train_ray(compose(*overrides, "meta.episodes=4"))
    assert "\n" not in str(err.value)
    assert len(watch.workers) == WORKERS  # one worker group, no restart


def test_worker_deaths_are_retried_and_user_errors_are_not(ray_local):
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
    from ray.train.v2.api.config import FailureConfig
    from ray.train.v2.api.exceptions import WorkerGroupError

    from metaad_dist.train.ray_backend import UserErrorsFailFast

    policy = UserErrorsFailFast(FailureConfig(max_failures=2))
    died = WorkerGroupError("worker 1 died", {1: RuntimeError("actor died unexpectedly")})
    assert policy.make_decision(died) == FailureDecision.RETRY
    wrapped = RuntimeError("in the worker")
    wrapped.__cause__ = ConfigError("meta.k_shot=2 but ...")
    assert policy.make_decision(WorkerGroupError("bad", {0: wrapped})) == FailureDecision.RAISE


def test_resume_with_another_worker_count_is_one_clear_error(ray_local, compose, tmp_path):
    overrides = [*SMALL, f"storage.root={tmp_path}", "run=resized", "trainer.max_failures=0"]
    train_ray(compose(*overrides, "meta.episodes=2"))
    with pytest.raises(ConfigError, match=r"trainer.num_workers=1 but .*checkpoint_000000002 was written with 2 workers"):
        train_ray(compose(*overrides, "meta.episodes=4", "trainer.num_workers=1"))


def test_resume_with_other_episode_settings_is_one_clear_error(ray_local, compose, tmp_path):
    """The in-memory sampler keeps no fingerprint: the checkpoint's config is compared instead."""
    overrides = [*SMALL, f"storage.root={tmp_path}", "run=changed", "trainer.max_failures=0"]
    train_ray(compose(*overrides, "meta.episodes=2"))
    with pytest.raises(ConfigError, match=r"meta.k_shot=2 but .*checkpoint_000000002 was written with meta.k_shot=\d+ "):
        train_ray(compose(*overrides, "meta.episodes=4", "meta.k_shot=2"))
    train_ray(compose(*overrides, "meta.episodes=4", "trainer.log_every=1"))  # more episodes, other logging: fine


def test_more_workers_than_cpus(ray_local, compose, tmp_path):
    cfg = compose(*SMALL, f"storage.root={tmp_path}", "trainer.num_workers=3")
    with pytest.raises(ConfigError, match=r"^trainer.num_workers=3 exceeds the 2 CPUs of the Ray cluster$"):
        train_ray(cfg)


def test_on_a_cluster_missing_workers_are_asked_of_the_autoscaler(ray_local, compose, tmp_path, monkeypatch, capsys):
    """Nodes an autoscaler has not started yet are not in cluster_resources(): no refusal there."""
    from ray.autoscaler.sdk import request_resources

    from metaad_dist.train.ray_trainer import check_cluster

    monkeypatch.setenv("RAY_ADDRESS", "auto")
    try:
        check_cluster(compose(*SMALL, f"storage.root={tmp_path}", "trainer.num_workers=3"))
    finally:
        request_resources(bundles=[])  # withdraw the demand
    assert "exceeds the 2 CPUs of the Ray cluster now; asked its autoscaler for 3 x {'CPU': 1.0}" in capsys.readouterr().err


def test_local_ray_binds_loopback_only(ray_local):
    assert {node["NodeManagerAddress"] for node in ray_local.nodes()} == {"127.0.0.1"}


def test_worker_niceness_reaches_the_processes_ray_starts(ray_local):
    """trainer.worker_niceness travels in the runtime env; -1 leaves Ray's own 15."""
    import ray
    from omegaconf import OmegaConf

    from metaad_dist.config import TrainerConfig
    from metaad_dist.data.ray_instance import worker_env

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    def started_at(value: int) -> int:
        trainer = OmegaConf.structured(TrainerConfig(worker_niceness=value))
        return ray.get(niceness.options(runtime_env={"env_vars": worker_env(trainer)}).remote())

    assert worker_env(OmegaConf.structured(TrainerConfig(worker_niceness=3)), {"AWS_REGION": "x"}) == {
        "AWS_REGION": "x", "RAY_worker_niceness": "3"}
    assert (started_at(0), started_at(7), started_at(-1)) == (0, 7, 15)


def test_importing_the_package_keeps_a_local_ray_on_loopback():
    """Ray resolves 127.0.0.1 to the external address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    is set before it is imported: importing metaad_dist first does that (as ensure_ray's callers do)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    temp = tempfile.mkdtemp(prefix="ray-lo-")  # short: Ray's socket paths must stay under 108 bytes
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    code = (
        "import metaad_dist, ray; "
        f"ray.init(num_cpus=1, include_dashboard=False, _node_ip_address='127.0.0.1', _temp_dir={temp!r}); "
        "print(ray.nodes()[0]['NodeManagerAddress']); ray.shutdown()"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert out.stdout.strip().splitlines()[-1:] == ["127.0.0.1"], out.stdout + out.stderr


def test_unreachable_storage(compose, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    cfg = compose(
        *SMALL, "storage.root=s3://metaad/runs", f"storage.endpoint_url=http://127.0.0.1:{port}",
        "storage.connect_timeout_s=1", "storage.max_attempts=1",
    )
    with pytest.raises(UserError, match=r"^s3://metaad: S3 endpoint http://127.0.0.1:\d+ is unreachable") as err:
        train_ray(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("trainer.backend=nccl", "trainer.backend='nccl' needs trainer.use_gpu=true"),
    ("trainer.backend=mpi", "trainer.backend='mpi'; expected one of"),
    ("trainer.grad_collective=ring", "trainer.grad_collective='ring'; expected one of"),
    ("trainer.sampler=disk", "trainer.sampler='disk'; expected one of"),
    ("trainer.num_workers=0", "trainer.num_workers=0; expected at least 1"),
    ("trainer.device=cuda:1", "trainer.device='cuda:1'; with trainer=ray"),
    ("trainer.worker_niceness=20", "trainer.worker_niceness=20; expected 0-19"),
    ("meta.update_order=both", "meta.update_order='both'; expected one of sequential, simultaneous"),
])
def test_bad_trainer_settings(compose, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        train_ray(compose(*SMALL, f"storage.root={tmp_path}", override))


def test_shared_memory_collective_needs_cpu_workers(compose, tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.grad_collective=shared_memory needs CPU workers on an x86-64 machine"):
        train_ray(compose(*SMALL, f"storage.root={tmp_path}", "trainer.grad_collective=shared_memory", "trainer.use_gpu=true"))


def _sums_by_collective(rank: int, port: int, results) -> None:
    """One of two gloo processes: the gradient sums of both collectives on rank-dependent tensors."""
    import torch.distributed as dist

    from metaad_dist.train import collectives
    from metaad_dist.train.collectives import GradientAverager, log_row_over_workers, sum_over_workers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    flat = torch.arange(7, dtype=torch.float32) * (rank + 1) + 0.1 * rank
    out = {c: sum_over_workers(flat, c) for c in ("all_reduce", "all_gather")}
    param = torch.nn.Parameter(torch.zeros(2, 3))
    param.grad = torch.full((2, 3), float(rank + 1))
    averager, waited = GradientAverager("all_gather"), []
    averager.while_waiting = lambda: waited.append(rank)  # runs once, while the gather is in flight
    averager([param.grad])
    assert waited == [rank] and averager.while_waiting is None
    values, model = log_line_inputs(rank)  # the workers disagree on one parameter, by 0.25
    row = log_row_over_workers(values, model, torch.device("cpu"))
    collectives.LOG_GATHER_MAX_FLOATS = 0  # a model too large to gather: the two all-reduces instead
    assert log_row_over_workers(values, model, torch.device("cpu")) == row
    # Plain lists, not tensors: a queued tensor travels as a shared-memory handle that the parent
    # can only open while this process is still alive, and it may already have exited.
    results.put((rank, out["all_reduce"].tolist(), out["all_gather"].tolist(), param.grad.tolist(), row))
    dist.destroy_process_group()


def test_gather_and_all_reduce_collectives_give_the_same_sums():
    """trainer.grad_collective: both ways of summing gradients agree, on every worker; a log
    line's means and parameter spread are right."""
    got = in_two_gloo_processes(_sums_by_collective)
    expected = torch.arange(7, dtype=torch.float32) * 3 + 0.1
    for _, reduced, gathered, grad, row in got:
        assert torch.allclose(torch.tensor(reduced), expected) and torch.allclose(torch.tensor(gathered), expected)
        assert torch.equal(torch.tensor(grad), torch.full((2, 3), 1.5))  # (1 + 2) / 2 workers
        # a log line: the metrics' means and the parameter spread, from one all-gather
        assert row == {"episodes_per_s": 15.0, "loss": 1.5, "param_spread": 0.25}
    assert got[0][2] == got[1][2]  # the gathered sum is bitwise the same on both workers


class Foreign:
    """Not a tensor or a plain container: weights-only loading refuses it (it could run code)."""


def test_checkpoint_state_round_trip_and_corruption(tmp_path):
    state = {
        "learner": {"model": {"w": torch.ones(2)}}, "step": 3, "episodes_done": 6, "num_workers": 2,
        "sampler": {"kind": "memory", "next_episode": 6}, "history": [{"episode": 6, "x": 1.0}], "config": "seed: 0\n",
    }
    path = write_state(state, str(tmp_path))
    loaded = read_state(open(path, "rb").read(), "ckpt")
    assert loaded["step"] == 3 and torch.equal(loaded["learner"]["model"]["w"], torch.ones(2))
    with pytest.raises(UserError, match=r"^ckpt: corrupt checkpoint \(\w+\); delete this checkpoint folder"):
        read_state(b"\x80\x04garbage", "ckpt")
    buf = io.BytesIO()
    torch.save({"x": Foreign()}, buf)
    with pytest.raises(UserError, match=r"^ckpt: corrupt checkpoint"):
        read_state(buf.getvalue(), "ckpt")
    buf = io.BytesIO()
    torch.save({"learner": {}}, buf)
    with pytest.raises(UserError, match=r"not a metaad training state"):
        read_state(buf.getvalue(), "ckpt")


def test_draw_ahead_draws_every_step_once_in_order():
    """DrawAhead: a step's collective draws the next step's episodes; a step without a collective
    leaves its hook unused, and the next step draws its own."""
    from metaad_dist.train.collectives import GradientAverager
    from metaad_dist.train.draw_ahead import DrawAhead

    averager, drawn = GradientAverager(), []
    ahead = DrawAhead(lambda s: drawn.append(s) or [s], averager)
    got = []
    for s in range(4):
        got.append(ahead.episodes(s, 4))
        if s in (0, 2):  # the collectives of steps 0 and 2 run their hook; step 1 has none
            averager.while_waiting()
    assert got == [[0], [1], [2], [3]] and drawn == [0, 1, 2, 3]
    assert averager.while_waiting is None and ahead.ahead == {}  # the last step draws nothing ahead


def test_crossed_counts_multiples_inside_a_step():
    assert crossed(0, 2, 2) and not crossed(2, 3, 4) and crossed(3, 5, 4) and not crossed(0, 8, 0)


def test_sampler_actors_give_the_same_training(uninterrupted, compose, tmp_path):
    """trainer.sampler=actors: each worker streams its episodes from a SamplerPool over the
    prepared digits; the episodes (hence the parameters) equal the in-memory sampler's."""
    _, expected = uninterrupted
    prepared = tmp_path / "prepared-digits"
    assert main(["prepare", "data=digits", f"output={prepared}", "quiet=true"]) == 0
    cfg = compose(*SMALL, f"storage.root={tmp_path / 'runs'}", "run=pooled", f"data.path={prepared}",
                  "trainer.sampler=actors")
    result = train_ray(cfg)
    assert result.metrics["trainer"]["episodes_trained"] == EPISODES
    assert max_difference(trained_state(cfg), expected) < TOLERANCE
