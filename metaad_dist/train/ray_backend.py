"""Ray Train plumbing the driver sets up (train_ray): where the torch.distributed group listens,
and which worker failures a restart can cure.

Rendezvous. Ray Train picks the group's master address with ``ray.util.get_node_ip_address()``
on rank 0 (ray/train/torch/config.py, ``_TorchBackend.on_start`` -> ``get_address_and_port``):
127.0.0.1 for a local instance, the node's address on a cluster. torch's ``TCPStore`` then listens
on every interface (``::``) whatever host it is given, unauthenticated. `BoundTorchConfig` keeps
Ray's choice of address and port but has rank 0 bind a socket to exactly that address and hand
it to the store (``master_listen_fd``); gloo's (and NCCL's) own sockets are pinned to the
interface holding that address.

Failures. Ray Train restarts the worker group after any worker error, up to
``FailureConfig.max_failures``. A `UserError` (a corrupt checkpoint, a setting the checkpoint
contradicts, a damaged dataset) is deterministic and would fail identically on every attempt, so
`UserErrorsFailFast` raises it at once; worker deaths and other errors are still retried.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.torch.config import _TorchBackend
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
from ray.train.v2.api.exceptions import WorkerGroupError

from metaad_dist.errors import UserError

_listening: list[socket.socket] = []  # rank 0's bound rendezvous socket, open while the store lives


def interface_of(address: str):
    """The network interface that holds `address` (e.g. 'lo' for 127.0.0.1), or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs):
            return name
    return None


def bound_process_group(backend: str, world_rank: int, world_size: int, address: str, port: int, timeout_s: int) -> None:
    """torch.distributed.init_process_group whose rendezvous store listens on `address` only."""
    import os

    interface = interface_of(address)
    if interface is not None:  # gloo/NCCL pair sockets: the group's interface, not the hostname's
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    if "nccl" in backend:
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # as Ray's own setup does
    timeout = timedelta(seconds=timeout_s)
    rank, world = world_rank, world_size
    if rank == 0:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(max(world, 8))
        _listening.append(listener)
        store = dist.TCPStore(address, port, world, True, timeout, master_listen_fd=listener.fileno())
    else:
        store = dist.TCPStore(address, port, world, False, timeout)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)


class _BoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        import ray
        from ray.train._internal.utils import get_address_and_port
        from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
        from ray.train.torch.config import _set_torch_distributed_env_vars

        address, port = worker_group.execute_single(0, get_address_and_port)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)  # LOCAL_RANK and friends, as Ray does
        ray.get([
            worker_group.execute_single_async(
                i, bound_process_group, backend=backend_config.backend or "gloo", world_rank=i, world_size=len(worker_group),
                address=address, port=port, timeout_s=backend_config.timeout_s,
            )
            for i in range(len(worker_group))
        ])


@dataclass
class BoundTorchConfig(TorchConfig):
    """TorchConfig whose rendezvous listens on the group's address only (module docstring)."""

    @property
    def backend_cls(self):
        return _BoundTorchBackend


def user_error_in(exc: BaseException):
    """The first UserError in an exception's chain (Ray wraps worker errors), or None."""
    cur, seen = exc, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, UserError):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    return None


class UserErrorsFailFast(DefaultFailurePolicy):
    """Raise a worker group failure caused by a UserError at once; retry the rest as Ray does."""

    def make_decision(self, training_failed_error):
        if isinstance(training_failed_error, WorkerGroupError) and any(
            user_error_in(e) is not None for e in training_failed_error.worker_failures.values()
        ):
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


class MetaadTorchTrainer(TorchTrainer):
    """TorchTrainer with the fail-fast policy for deterministic (UserError) failures."""

    def _initialize_and_run_controller(self, **kwargs):
        kwargs["failure_policy"] = UserErrorsFailFast(self.run_config.failure_config)
        return super()._initialize_and_run_controller(**kwargs)
