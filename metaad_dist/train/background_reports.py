"""A worker's `ray.train.report` calls made on one background thread, in order, off the loop.

Why: a report is a barrier of every worker through Ray Train's synchronization actor (a round
trip through another process), then the checkpoint folder's upload and a hand-off to the
controller, whose queue holds one report until its next poll. On a machine whose cores the
workers fill, those round trips cost rank 0 ~7-9 ms per checkpoint and the other workers more,
all of them idle meanwhile (benchmarks/README.md, "Reports off the loop"). The loop still writes
the checkpoint folder itself, so a checkpoint is the state of the step it names.

Ray Train requires every worker to report the same number of times: every worker submits the
same reports in the same order and one thread per worker makes them in that order, so each
barrier pairs the same reports as before. At most one report is in flight per worker (a new one
first waits for the previous), so checkpoint folders cannot pile up behind a slow controller,
and a failed report raises in the loop at the next report or at `close`.

The price: a checkpoint counts once its report has finished, some ms after the loop moved on,
so a worker dying within that window resumes from the checkpoint before (as with Ray's own
`CheckpointUploadMode.ASYNC`, which moves only the upload off the loop).
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional


class BackgroundReports:
    def __init__(self, report: Callable[..., None]):
        self.report = report
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="metaad-report")
        self.pending: Optional[Future] = None
        self.waited_s = 0.0  # the loop waiting for a previous report (back-pressure) and at `close`

    def submit(self, *args, **kwargs) -> None:
        """`report(*args, **kwargs)` on the thread, once the previous report has finished."""
        self.wait()
        self.pending = self.thread.submit(self.report, *args, **kwargs)

    def close(self) -> None:
        """Wait for the last report (raising its error), then stop the thread."""
        try:
            self.wait()
        finally:
            self.thread.shutdown()

    def wait(self) -> None:
        """Until the report in flight (if any) has finished; raises its error."""
        if self.pending is None:
            return
        started = time.perf_counter()
        pending, self.pending = self.pending, None
        try:
            pending.result()
        finally:
            self.waited_s += time.perf_counter() - started
