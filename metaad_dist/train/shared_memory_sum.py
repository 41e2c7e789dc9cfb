"""The gradient sum of workers that share one machine, through a shared-memory segment.

Why not gloo: a gloo collective hands each call through several threads (the caller, the
process group's worker, the TCP transport's event loop) on both sides, and each hand-off is a
scheduler wake-up. On a busy 2-vCPU VM that costs ~1.5 ms per collective whatever its size
(52k floats or 1k), ~12 % of a digits step at 4 episodes per step, while a loopback TCP round
trip is 12-89 us (benchmarks/README.md, "Where the lockstep pair loses"). Here each worker
copies its flat gradient into its own slot of a segment all workers map, publishes a step
counter, and polls (yielding its core) until every worker's counter has arrived; then each
sums the slots in rank order, so every worker gets the bitwise-same sum, computed as gloo's
all_gather path computes it (`collectives.start_gather_rows`). NCCL, and its shared-memory transport, do
the same on GPUs; gloo has no such transport.

Two slots per worker, used on alternate calls: a worker writes call c's slot only after it has
read every worker's call c-1 data and published c-1, and a worker reaching call c+1 must have
seen every counter at c, so nobody overwrites a slot another worker may still be reading.

Only on x86-64: the writer's data stores and its counter store are separate C calls, which
x86's total store order keeps in order for the reader; a weakly ordered CPU (ARM) could show
the counter before the data, and Python has no memory fence to stop it. Elsewhere, and when
the workers do not all see the segment (they run on several machines), gloo is used.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import platform
import secrets
import tempfile
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

HEADER = 64  # a random token, so a worker on another machine cannot mistake a file for the segment
LINE = 64  # each worker's counter on its own cache line: a write does not stall the others' reads
# How long a worker waits for the others before it gives up: the process group's own timeout in
# Ray Train (TorchConfig.timeout_s). A dead worker normally ends the group sooner: Ray Train
# stops every worker when one fails.
TIMEOUT_S = 1800.0
# A worker polls without sleeping for this long (the skew between workers is ~0.1-1 ms a step,
# benchmarks/README.md), then sleeps between polls: a long wait (rank 0 validating or writing a
# checkpoint while the others wait at the next sum) does not hold a core the others could use.
SPIN_S = 0.01
POLL_SLEEP_S = 1e-4
# The largest segment made: two slots of the flat gradient per worker. Past it (a large model,
# many workers) the memory matters more than a collective's latency, and gloo is used.
MAX_SEGMENT_BYTES = 256 << 20


def supported() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


class SharedMemorySum:
    """A collective sum (and gather) for the workers of the default process group, when they share a machine.

    `open` (a collective call) returns None when they do not; then use gloo."""

    def __init__(self, mm: mmap.mmap, path: str, rank: int, world: int, capacity: int):
        self.mm, self.path, self.rank, self.world, self.capacity = mm, path, rank, world, capacity
        self.counters = torch.frombuffer(mm, dtype=torch.int64, count=world * LINE // 8, offset=HEADER).view(world, -1)
        self.slots: dict[tuple[int, torch.dtype], torch.Tensor] = {}  # (half, dtype) -> world x capacity view
        self.calls = 0
        self.timeout_s = TIMEOUT_S

    @classmethod
    def open(cls, capacity: int, directory: Optional[str] = None) -> Optional["SharedMemorySum"]:
        """Rank 0 creates a segment for sums of up to `capacity` bytes per worker; the others map
        it. Every worker returns the collective, or None on every worker if one could not map it."""
        rank, world = dist.get_rank(), dist.get_world_size()
        directory = directory or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
        capacity = -(-capacity // LINE) * LINE
        size = HEADER + world * LINE + 2 * world * capacity
        if size > MAX_SEGMENT_BYTES:  # the same on every worker: no one waits for the others here
            return None
        offer = [None]
        if rank == 0:
            offer = [_create(directory, size)]
        dist.broadcast_object_list(offer, src=0)
        mapped = _map(offer[0], size) if offer[0] is not None else None
        ok = torch.tensor([1 if mapped is not None else 0])
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # everyone has mapped it (or given up) from here on
        if rank == 0 and offer[0] is not None:
            with contextlib.suppress(FileNotFoundError):  # the mappings stay; nothing is left behind if a worker dies
                os.unlink(offer[0][0])
        if not int(ok):
            if mapped is not None:
                mapped.close()
            return None
        return cls(mapped, offer[0][0], rank, world, capacity)

    def fits(self, flat: torch.Tensor) -> bool:
        return flat.numel() * flat.element_size() <= self.capacity

    def start(self, flat: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Publish this worker's 1-D tensor; returns the call that waits for every worker's and
        sums them in rank order (the same sum on every worker)."""
        calls, rows = self._publish(flat)

        def finish() -> torch.Tensor:
            self._wait(calls)
            return rows.sum(dim=0)  # a new tensor: the slot may be reused two calls later

        return finish

    def gather(self, flat: torch.Tensor) -> torch.Tensor:
        """Every worker's 1-D tensor, one row per rank (world x n), the same on every worker."""
        calls, rows = self._publish(flat)
        self._wait(calls)
        return rows.clone()

    def _publish(self, flat: torch.Tensor) -> tuple[int, torch.Tensor]:
        if not self.fits(flat):
            raise ValueError(f"{flat.numel() * flat.element_size()} bytes; the segment holds {self.capacity} per worker")
        self.calls += 1
        rows = self._slots(self.calls % 2, flat.dtype)[:, :flat.numel()]
        rows[self.rank].copy_(flat.detach().reshape(-1))
        self.counters[self.rank, 0] = self.calls
        return self.calls, rows

    def _slots(self, half: int, dtype: torch.dtype) -> torch.Tensor:
        view = self.slots.get((half, dtype))
        if view is None:
            count = self.world * self.capacity // torch.empty(0, dtype=dtype).element_size()
            offset = HEADER + self.world * LINE + half * self.world * self.capacity
            view = self.slots[half, dtype] = torch.frombuffer(self.mm, dtype=dtype, count=count, offset=offset).view(self.world, -1)
        return view

    def _wait(self, calls: int) -> None:
        counters, started = self.counters[:, 0], None
        while int(counters.min()) < calls:
            now = time.monotonic()
            if started is None:
                started = now
            elif now - started > self.timeout_s:
                late = [r for r in range(self.world) if int(counters[r]) < calls]
                raise RuntimeError(f"workers {late} did not reach gradient sum {calls} within {self.timeout_s:g} s")
            if now - started < SPIN_S:
                os.sched_yield()  # releases the GIL and the core: the worker's other threads run
            else:
                time.sleep(POLL_SLEEP_S)

    def close(self) -> None:
        """Unmaps the segment; the tensors this object handed out (sums) are copies and stay valid."""
        self.slots.clear()
        del self.counters
        self.mm.close()


def _create(directory: str, size: int) -> Optional[tuple[str, bytes]]:
    token = secrets.token_bytes(HEADER)
    try:
        fd, path = tempfile.mkstemp(prefix="metaad-grads-", dir=directory)
    except OSError:  # no such folder, or not writable
        return None
    try:
        os.posix_fallocate(fd, 0, size)  # reserve the pages now: a full tmpfs fails here, not with SIGBUS later
        os.pwrite(fd, token, 0)
    except OSError:
        os.close(fd)
        os.unlink(path)
        return None
    os.close(fd)
    return path, token


def _map(offer: tuple[str, bytes], size: int) -> Optional[mmap.mmap]:
    path, token = offer
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # another machine: the file is not there
        return None
    try:
        if os.fstat(fd).st_size != size or os.pread(fd, HEADER, 0) != token:
            return None
        return mmap.mmap(fd, size)
    except OSError:  # no address space or memory for the mapping
        return None
    finally:
        os.close(fd)
