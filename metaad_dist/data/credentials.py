"""Forwarding the driver's AWS chain to Ray workers without writing the secrets anywhere.

Ray processes inherit the environment of the node they run on, not the driver's, so a driver
with credentials in its environment must hand them to its tasks, actors and Train workers.
`runtime_env={"env_vars": ...}` would do it, but Ray logs every runtime env it creates in
`runtime_env_agent.log` and shows it on the dashboard (ray-project/ray#29985, #40549), and Ray
Train exports the workers' runtime env to its run state. So only the non-secret settings go
there; the keys travel as a task argument (the object store, never logged) wrapped in
`AwsSecrets`, whose text form hides them, and the process puts them in its own environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SETTING_KEYS = (
    "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE", "AWS_EC2_METADATA_DISABLED",
)


def settings_env() -> dict[str, str]:
    """The driver's non-secret AWS settings, for `runtime_env["env_vars"]`."""
    return {k: os.environ[k] for k in SETTING_KEYS if os.environ.get(k)}


@dataclass(frozen=True, repr=False)
class AwsSecrets:
    """The driver's static AWS keys, if any; `str`/`repr` never show them."""

    values: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_environ(cls) -> "AwsSecrets":
        return cls(tuple((k, os.environ[k]) for k in SECRET_KEYS if os.environ.get(k)))

    def install(self) -> None:
        """Put the keys in this process's environment (a Ray worker's), where boto3 and
        pyarrow's S3 filesystem look for them."""
        os.environ.update(dict(self.values))

    def __repr__(self) -> str:
        return f"AwsSecrets({', '.join(k for k, _ in self.values) or 'none'}; values hidden)"

    __str__ = __repr__
