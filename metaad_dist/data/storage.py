"""One storage layer over pyarrow.fs for local folders and s3://bucket/prefix.

Local and S3 go through the same code path. Credentials come from the standard AWS chain
(environment, shared files, instance profile); they are never taken from configs or logged.
Every write goes to a temporary key first and is then moved into place, so a reader never
sees a half-written object.
"""
from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs

from metaad_dist.config import StorageConfig
from metaad_dist.errors import UserError


@dataclass
class Location:
    """A filesystem and a base path inside it ("bucket/prefix" for S3, absolute path locally)."""

    fs: pafs.FileSystem
    base: str
    uri: str

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts) if parts else self.base

    def child(self, *parts: str) -> "Location":
        return Location(self.fs, self.path(*parts), self.uri.rstrip("/") + "/" + "/".join(parts))

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        path = self.path(*parts)
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise UserError(f"{self.uri.rstrip('/')}/{'/'.join(parts)}: not found") from None

    def write_bytes_atomic(self, data: bytes, *parts: str) -> None:
        """Write to a temporary sibling, then move it over the final key."""
        final = self.path(*parts)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)


def s3_filesystem(storage: StorageConfig) -> pafs.S3FileSystem:
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {"region": storage.region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


def open_location(uri: str, storage: Optional[StorageConfig] = None) -> Location:
    storage = storage or StorageConfig()
    if uri.startswith("s3://"):
        return Location(s3_filesystem(storage), uri[len("s3://"):].rstrip("/"), uri)
    path = os.path.abspath(uri)
    return Location(pafs.LocalFileSystem(), path, path)
