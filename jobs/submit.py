#!/usr/bin/env python
"""Submit a metaad command (train, tune, evaluate, score) to a Ray cluster as a Ray Job.

    python jobs/submit.py train --address http://127.0.0.1:8265 -- trainer=ray trainer.num_workers=4 \
        storage=s3 storage.root=s3://my-bucket/runs data=unsw_nb15 data.path=s3://my-bucket/datasets/unsw

Everything after `--` is passed to `metaad <command>` unchanged (Hydra overrides), so the same
config runs on a laptop and on a cluster. The repository is uploaded as the job's working
directory (configs/ included) unless --no-working-dir is given (package installed in the
cluster's image). Credentials are never sent: the cluster's nodes take them from their own AWS
chain (instance profile, Kubernetes Secret, environment).

Exit code: 0 when the job SUCCEEDED, 1 when it FAILED (its one-line error is printed), 2 when it
was STOPPED, 3 on a timeout while waiting. --no-wait prints the job id and exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path

COMMANDS = ("train", "tune", "evaluate", "score")
REPO = Path(__file__).resolve().parent.parent
EXCLUDES = [".venv", ".git", "runs", "outputs", "benchmarks/results", "**/__pycache__", "*.egg-info"]
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 2}
ERROR_PREFIX = "metaad: error:"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=[*COMMANDS, "stop", "logs", "status"],
                   help="metaad command to run, or stop/logs/status of an existing job (--job-id)")
    p.add_argument("--address", default=None, help="Ray dashboard address (default: $RAY_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--job-id", default=None, help="submission id (to stop/inspect, or to name a new job)")
    p.add_argument("--no-wait", action="store_true", help="submit and return at once")
    p.add_argument("--follow", action="store_true", help="stream the job's logs while waiting")
    p.add_argument("--timeout", type=float, default=0, help="seconds to wait before giving up (0: no limit)")
    p.add_argument("--no-working-dir", action="store_true", help="do not upload the repository")
    p.add_argument("--pip", nargs="*", default=None, help="pip requirements for the job's runtime environment")
    return p.parse_args(argv), overrides


def client(address: str | None):
    import os

    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265")


def entrypoint(command: str, overrides: list[str]) -> str:
    return " ".join(["python", "-m", "metaad_dist", command, *map(shlex.quote, overrides)])


def runtime_env(args) -> dict:
    env: dict = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    if not args.no_working_dir:
        env.update({"working_dir": str(REPO), "excludes": EXCLUDES})
    if args.pip:
        env["pip"] = args.pip
    return env


def job_error(logs: str) -> str:
    """The job's one-line metaad error, else its last non-empty log line."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line
    return lines[-1] if lines else "(no output)"


async def _follow(c, job_id: str) -> None:
    async for chunk in c.tail_job_logs(job_id):
        print(chunk, end="", flush=True)


def wait(c, job_id: str, follow: bool, timeout: float) -> str:
    from ray.job_submission import JobStatus

    start = time.monotonic()
    if follow:
        try:  # returns when the job ends
            asyncio.run(asyncio.wait_for(_follow(c, job_id), timeout or None))
        except asyncio.TimeoutError:
            return "TIMEOUT"
    while True:
        status = c.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value)
        if timeout and time.monotonic() - start > timeout:
            return "TIMEOUT"
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        c = client(args.address)
    except Exception as exc:  # noqa: BLE001 - connection errors are user-facing
        print(f"submit: error: cannot reach the Ray cluster ({str(exc).splitlines()[0]})", file=sys.stderr)
        return 1
    if args.command in ("stop", "logs", "status"):
        if not args.job_id:
            print(f"submit: error: {args.command} needs --job-id", file=sys.stderr)
            return 1
        if args.command == "stop":
            print(f"stop requested: {c.stop_job(args.job_id)}")
        elif args.command == "logs":
            print(c.get_job_logs(args.job_id), end="")
        else:
            print(c.get_job_status(args.job_id).value)
        return 0
    job_id = c.submit_job(
        entrypoint=entrypoint(args.command, overrides), runtime_env=runtime_env(args),
        submission_id=args.job_id,
    )
    print(f"submitted {job_id}: {entrypoint(args.command, overrides)}", flush=True)
    if args.no_wait:
        return 0
    status = wait(c, job_id, args.follow, args.timeout)
    print(f"job {job_id}: {status}")
    if status == "TIMEOUT":
        print(f"submit: error: job {job_id} still running after {args.timeout:.0f}s", file=sys.stderr)
        return 3
    if status == "FAILED":
        print(job_error(c.get_job_logs(job_id)), file=sys.stderr)
    return EXIT_CODES.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
