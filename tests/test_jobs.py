"""Ray Jobs end to end: a real head on 127.0.0.1 (`ray start --head`), real submissions
through jobs/submit.py, storage on the real S3 test server."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUBMIT = REPO / "jobs" / "submit.py"
HEAD_START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 300


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head(s3_server, tmp_path_factory):
    """A separate Ray head with a dashboard (Ray Jobs need it), on loopback ports of its own.

    Its processes get the S3 server's credentials through the environment, as cluster nodes
    get theirs from their own AWS chain. Stopped by process group, never with `ray stop`
    (that would also stop the test session's own Ray instance)."""
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable))
    gcs, dash, client, node_mgr, obj_mgr, agent, agent_grpc, metrics, rt_env = _free_ports(9)
    temp = Path("/tmp") / f"rayjobs-{os.getpid()}"
    env = {**os.environ, **s3_server.env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}  # the job's `python`
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path_factory.mktemp("head") / "head.log", "wb")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         f"--ray-client-server-port={client}", f"--node-manager-port={node_mgr}",
         f"--object-manager-port={obj_mgr}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={rt_env}", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    from ray.job_submission import JobSubmissionClient

    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"ray head did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(1)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    import psutil  # not pkill: a minimal image has no procps

    for leftover in psutil.process_iter(["cmdline"]):  # workers that left the group
        if str(temp) in " ".join(leftover.info["cmdline"] or []):
            try:
                leftover.kill()
            except psutil.Error:
                pass
    shutil.rmtree(temp, ignore_errors=True)
    log.close()


def _submit(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SUBMIT), *args[:1], "--address", address, "--timeout", str(JOB_TIMEOUT_S), *args[1:]],
        capture_output=True, text=True, timeout=JOB_TIMEOUT_S + 60,
    )


def test_train_job_succeeds_and_writes_model_and_metrics_to_s3(ray_head, s3):
    root = s3.uri("runs")
    proc = _submit(ray_head, "train", "--", "data=digits", "meta.episodes=60", f"storage.root={root}",
                   f"storage.endpoint_url={s3.endpoint_url}", "run=job-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCEEDED" in proc.stdout
    keys = s3.keys("runs/job-run/")
    assert {"runs/job-run/model.pt", "runs/job-run/metrics.json", "runs/job-run/config.yaml"} <= set(keys)
    assert s3.server.secret_key not in proc.stdout + proc.stderr


def test_job_with_a_bad_override_exits_non_zero_with_the_one_line_error(ray_head):
    proc = _submit(ray_head, "train", "--", "data=digits", "meta.no_such_key=1")
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        "metaad: error: unknown config key 'meta.no_such_key'; run `metaad --help` and "
        "`metaad <command> --cfg` for valid keys"
    )


def test_unreachable_cluster_is_one_line():
    (port,) = _free_ports(1)
    proc = subprocess.run([sys.executable, str(SUBMIT), "train", "--address", f"http://127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("submit: error: cannot reach the Ray cluster")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_follow_gives_up_at_the_timeout_with_exit_code_3(ray_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    proc = subprocess.run(
        [sys.executable, str(SUBMIT), "train", "--address", ray_head, "--follow", "--timeout", "8", "--",
         "data=digits", "meta.episodes=1000000", f"storage.root={tmp_path}"],
        capture_output=True, text=True, timeout=180,
    )
    client = JobSubmissionClient(ray_head)
    for job in client.list_jobs():  # stop the endless job: it would hold the head's CPUs
        if job.status in (JobStatus.PENDING, JobStatus.RUNNING):
            client.stop_job(job.submission_id)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "still running after 8s" in proc.stderr
