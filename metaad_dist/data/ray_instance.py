"""The Ray instance this process works with, and Ray's view of the project's storage.

Used by every part that runs on Ray (prepare's parallel read, Ray Train, Tune, Ray Data scoring),
so it lives below all of them. A local instance binds 127.0.0.1 only (metaad_dist/__init__.py
sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported).
"""
from __future__ import annotations

import logging
import os
import sys


def ray_storage(location):
    """(storage_path, filesystem) for RunConfig: the run's parent folder on the run's filesystem.

    On S3 the filesystem carries the driver's static keys when they come from the environment:
    Ray's controller and workers may run in processes started without them.
    """
    import posixpath

    import pyarrow.fs as pafs

    parent = posixpath.dirname(location.base.rstrip("/"))
    if not location.is_s3:
        return parent, pafs.LocalFileSystem()
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (key and secret):
        return parent, location.fs
    options = location.fs.__reduce__()[1][0]  # the settings pyarrow itself pickles
    options.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN", ""))
    attempts = location.storage.max_attempts if location.storage else 3
    fs = pafs.S3FileSystem(**options, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=int(attempts)))
    return parent, fs


def worker_env(trainer, extra: dict[str, str] | None = None) -> dict[str, str]:
    """`runtime_env["env_vars"]` for the Ray processes that do this job's work: `extra` plus
    the niceness they start at (trainer.worker_niceness; Ray's raylet applies
    RAY_worker_niceness from a worker's runtime env when it starts that worker)."""
    env = dict(extra or {})
    niceness = int(getattr(trainer, "worker_niceness", -1)) if trainer is not None else -1
    if niceness >= 0:
        env["RAY_worker_niceness"] = str(niceness)
    return env


def check_worker_niceness(trainer) -> None:
    from metaad_dist.errors import ConfigError

    if not -1 <= int(trainer.worker_niceness) <= 19:
        raise ConfigError(
            f"trainer.worker_niceness={trainer.worker_niceness}; expected 0-19 (-1: Ray's default, 15)")


def ensure_ray() -> bool:
    """Connect to RAY_ADDRESS, or start a local instance on 127.0.0.1; True if started here."""
    import ray

    if not sys.stdout.isatty():  # Ray colours the worker-log prefixes it prints unless told not to:
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # log files and job logs get no ANSI codes
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        # (loopback only: metaad_dist/__init__.py sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported)
        # One machine has no preemptible nodes; the watcher would only log a harmless error.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        quiet_default_token_warning()
        ray.init(_node_ip_address="127.0.0.1", configure_logging=True, logging_level="WARNING")
    return True


class _DefaultTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster.")


def quiet_default_token_warning() -> None:
    """Ray 2.60 warns on every local start that it enabled token auth by default: it tells the
    user of a loopback-only instance nothing, so it is dropped (the warning that auth is
    *disabled* still shows)."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DefaultTokenNotice) for f in logger.filters):
        logger.addFilter(_DefaultTokenNotice())
