"""BackgroundReports: a worker's reports leave the loop, in order, one in flight, errors not lost."""
import threading

import pytest

from metaad_dist.train.background_reports import BackgroundReports


def test_reports_run_in_order_on_one_other_thread_and_submit_does_not_wait_for_them():
    release, made = threading.Event(), []

    def report(n, checkpoint=None):
        if n == 0:
            assert release.wait(5)  # the loop goes on while this report is held
        made.append((n, checkpoint, threading.current_thread().name))

    reports = BackgroundReports(report)
    reports.submit(0, checkpoint="ckpt-0")
    assert made == []  # submit returned with the report still in flight
    release.set()
    reports.submit(1)
    reports.close()
    assert [(n, c) for n, c, _ in made] == [(0, "ckpt-0"), (1, None)]
    threads = {name for _, _, name in made}
    assert len(threads) == 1 and threads != {threading.current_thread().name}


def test_at_most_one_report_in_flight():
    started, release, running, most = threading.Event(), threading.Event(), [0], [0]
    lock = threading.Lock()

    def report(n):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        started.set()
        release.wait(5)
        with lock:
            running[0] -= 1

    reports = BackgroundReports(report)
    reports.submit(0)
    assert started.wait(5)
    second = threading.Thread(target=reports.submit, args=(1,))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # the second submit waits for the first report
    release.set()
    second.join(5)
    reports.close()
    assert most[0] == 1 and reports.waited_s > 0.1


def test_a_failed_report_raises_in_the_loop_at_the_next_submit_and_at_close():
    def report(n):
        if n == 1:
            raise RuntimeError("upload failed")

    reports = BackgroundReports(report)
    reports.submit(1)
    with pytest.raises(RuntimeError, match="upload failed"):
        reports.submit(2)
    reports.submit(1)
    with pytest.raises(RuntimeError, match="upload failed"):
        reports.close()
