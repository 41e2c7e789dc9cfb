"""Shared fixtures. Tests run against real components: a local Ray instance, real Parquet
files and a real S3-compatible server on 127.0.0.1."""
from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Before anything imports Ray (it reads this once): local instances bind 127.0.0.1 only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture
def compose():
    """Compose the real config tree with Hydra overrides, as the CLI does."""
    from metaad_dist.cli import compose_config

    def _compose(*overrides: str):
        cfg = compose_config(list(overrides))
        OmegaConf.set_struct(cfg, True)
        return cfg

    return _compose


# --------------------------------------------------------------------------- data plane (issue 3)

import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The shared raw datasets (../shared/datasets beside the clone, or $METAAD_DATASETS)."""
    path = Path(os.environ.get("METAAD_DATASETS") or REPO.parent / "shared" / "datasets").resolve()
    if not (path / "unsw_nb15").is_dir() or not (path / "nsl_kdd").is_dir():
        pytest.fail(
            f"raw datasets not found at {path}: the tests expect ../shared/datasets beside the repository "
            "(or METAAD_DATASETS pointing at a copy)"
        )
    return path


@pytest.fixture
def datasets_env(shared_datasets, monkeypatch) -> Path:
    """Dataset configs resolve ${oc.env:METAAD_DATASETS,...}: point it at the shared copy."""
    monkeypatch.setenv("METAAD_DATASETS", str(shared_datasets))
    return shared_datasets


@pytest.fixture(scope="session")
def s3_server():
    """A real SeaweedFS S3 server on free loopback ports for the whole session."""
    from s3_server import SeaweedS3

    server = SeaweedS3().start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class S3Bucket:
    server: object
    bucket: str

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def storage(self, **overrides):
        from metaad_dist.config import StorageConfig

        return StorageConfig(endpoint_url=self.endpoint_url, **overrides)

    def keys(self, prefix: str = "") -> list[str]:
        client = self.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        # Objects only: pyarrow leaves empty "folder/" marker objects after moves and deletes.
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


@pytest.fixture
def s3(s3_server, monkeypatch) -> S3Bucket:
    """The server's credentials in the environment (the standard AWS chain) and a fresh bucket."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    bucket = f"metaad-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return S3Bucket(s3_server, bucket)


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray instance on 127.0.0.1 shared by every test that needs Ray (2 CPUs)."""
    import ray

    os.environ.update({
        "RAY_AUTH_MODE": "disabled",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    })
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(tmp_path_factory.mktemp("ray")),
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


def ray_files_containing(text: str) -> list[str]:
    """Files of the running Ray session (logs, runtime env records) whose bytes contain `text`."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    needle = text.encode()
    return [str(p) for p in session.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def in_two_gloo_processes(target) -> list:
    """Runs `target(rank, port, results)` in two spawned processes (ranks 0 and 1, which form a
    gloo group on 127.0.0.1:port); each puts one `(rank, ...)` tuple on `results`. Returns the
    tuples in rank order, after both processes exited cleanly."""
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, port, results)) for rank in range(2)]
    for p in procs:
        p.start()
    got = sorted((results.get(timeout=120) for _ in procs), key=lambda r: r[0])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def log_line_inputs(rank: int):
    """A log line's inputs on worker `rank` of two: metrics, and a model whose parameters the
    two workers hold alike but for one, which differs by 0.25 (the expected param_spread)."""
    import torch

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
        model.bias[1] += 0.25 * rank
    return {"loss": 1.0 + rank, "episodes_per_s": 10.0 * (rank + 1)}, model
