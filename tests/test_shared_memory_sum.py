"""The shared-memory gradient sum (train/shared_memory_sum.py) in two real gloo processes.

It must give every worker the bitwise-same sum (and gather) as gloo's all_gather path, call after call
(alternating slots, changing sizes and dtypes), leave no file behind, fall back to gloo when a
worker cannot map the segment (workers on several machines), and fail with a clear message,
not hang, when a worker never arrives.
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import in_two_gloo_processes, log_line_inputs

from metaad_dist.train import shared_memory_sum

pytestmark = pytest.mark.skipif(not shared_memory_sum.supported(), reason="x86-64 only (store order)")


def _worker(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from metaad_dist.errors import ConfigError
    from metaad_dist.train.collectives import gather_rows, gradient_averager, log_row_over_workers, sum_over_workers
    from metaad_dist.train.shared_memory_sum import SharedMemorySum

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    out = {}
    shared = SharedMemorySum.open(capacity=1000 * 8)
    dist.barrier()  # rank 0 unlinks once every worker has mapped it: on rank 1, open may return first
    out["unlinked"] = not os.path.exists(shared.path)
    gen = torch.Generator().manual_seed(rank)
    same = []
    for call, (n, dtype) in enumerate([(7, torch.float32), (1000, torch.float32), (3, torch.float64), (999, torch.float32),
                                       (1000, torch.float64), (1, torch.float32)] * 3):
        flat = torch.randn(n, generator=gen, dtype=dtype) * (call + 1)
        finish = shared.start(flat)
        if rank == 1 and call % 4 == 0:
            torch.randn(200, 200) @ torch.randn(200, 200)  # this worker arrives late at some sums
        got = finish()
        same.append(torch.equal(got, sum_over_workers(flat, "all_gather")) and got.dtype == dtype)
    out["same_as_gather"] = same
    # a log line's gather (metrics and parameters) through the segment, as through gloo
    values, model = log_line_inputs(rank)  # the workers disagree on one parameter, by 0.25
    row = log_row_over_workers(values, model, torch.device("cpu"), shared)
    out["log_row"] = (row == log_row_over_workers(values, model, torch.device("cpu")), row["param_spread"])
    flat = torch.arange(5, dtype=torch.float64) * (rank + 1)
    out["gathered"] = torch.equal(shared.gather(flat), gather_rows(flat))
    with pytest.raises(ValueError, match="^8008 bytes; the segment holds 8000 per worker"):
        shared.start(torch.zeros(1001, dtype=torch.float64))

    param = torch.nn.Parameter(torch.zeros(2, 3))
    param.grad = torch.full((2, 3), float(rank + 1))
    averager, waited = gradient_averager("auto", "gloo", [param], 2), []
    out["auto"] = (averager.collective, averager.shared is not None)
    averager.while_waiting = lambda: waited.append(rank)
    averager([param.grad])
    out["averaged"] = param.grad.tolist() if waited == [rank] else None
    averager.close()

    # A worker that cannot map the segment (another machine): every worker falls back to gloo,
    # and an explicit shared_memory setting is a one-line error on every worker.
    if rank == 1:
        shared_memory_sum._map = lambda offer, size: None
    fallback = gradient_averager("auto", "gloo", [param], 2)
    out["fallback"] = (fallback.collective, fallback.shared)
    try:
        gradient_averager("shared_memory", "gloo", [param], 2)
        out["explicit"] = None
    except ConfigError as exc:
        out["explicit"] = str(exc)

    # A model too large for the limit: gloo, without a segment
    huge = torch.empty(shared_memory_sum.MAX_SEGMENT_BYTES // 8, device="meta")  # no memory behind it
    large = gradient_averager("auto", "gloo", [huge], 2)
    out["too_large"] = (large.collective, large.shared)

    # A worker that never arrives: the other one gives up with the ranks it waited for.
    shared.timeout_s = 0.3
    if rank == 0:
        try:
            shared.start(torch.ones(4))()
            out["timeout"] = None
        except RuntimeError as exc:
            out["timeout"] = str(exc)
    dist.barrier()
    shared.close()
    results.put((rank, out))
    dist.destroy_process_group()


def test_shared_memory_sum_matches_gloo_and_falls_back():
    got = dict(in_two_gloo_processes(_worker))
    for rank, out in got.items():
        assert out["unlinked"]
        assert out["same_as_gather"] == [True] * 18
        assert out["log_row"] == (True, 0.25) and out["gathered"]
        assert out["auto"] == ("shared_memory", True)
        assert out["averaged"] == [[1.5] * 3] * 2  # (1 + 2) / 2, with the hook run during the wait
        assert out["fallback"] == ("all_gather", None)
        assert out["explicit"].startswith("trainer.grad_collective=shared_memory; the workers could not share a segment")
        assert out["too_large"] == ("all_gather", None)
    assert got[0]["timeout"] == "workers [1] did not reach gradient sum 21 within 0.3 s"
