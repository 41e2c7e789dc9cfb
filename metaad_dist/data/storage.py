"""One storage layer over pyarrow.fs for local folders and s3://bucket/prefix.

Local and S3 go through the same code path. Credentials come from the standard AWS chain
(environment, shared files, instance profile); they are never taken from configs or logged.
Every write goes to a temporary key first and is then moved into place, so a reader never
sees a half-written object.

Before pyarrow touches an S3 location, boto3 checks (once per process) that the endpoint
answers, the credentials are accepted and the bucket exists, creating it when
``storage.create_bucket`` is set, so each of those failures is one clear line rather than a
retry loop or a C++ stack of messages.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import threading
import uuid
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from metaad_dist.config import StorageConfig
from metaad_dist.errors import UserError, first_line

S3_SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"


@dataclass
class Location:
    """A filesystem and a base path inside it ("bucket/prefix" for S3, absolute path locally)."""

    fs: pafs.FileSystem
    base: str
    uri: str
    storage: Optional[StorageConfig] = None  # S3 client settings, for boto3 listings

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith(S3_SCHEME)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts) if parts else self.base

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts]) if parts else self.uri

    def child(self, *parts: str) -> "Location":
        return Location(self.fs, self.path(*parts), self.uri.rstrip("/") + "/" + "/".join(parts), self.storage)

    def exists(self, *parts: str) -> bool:
        with storage_errors(self.uri_of(*parts)):
            return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        path = self.path(*parts)
        try:
            with storage_errors(self.uri_of(*parts)):
                with self.fs.open_input_stream(path) as f:
                    return f.read()
        except FileNotFoundError:
            raise UserError(f"{self.uri_of(*parts)}: not found") from None

    def write_bytes_atomic(self, data: bytes, *parts: str) -> None:
        """Write to a temporary sibling, then move it over the final key: readers see the old
        object or the whole new one. Locally the bytes are fsynced before the rename (a crash
        cannot leave an empty model.pt or manifest.json behind); a failed write removes its
        temporary file."""
        final = self.path(*parts)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with storage_errors(self.uri_of(*parts), writing=True):
            try:
                if self.is_s3:  # S3 has no folders to create
                    with self.fs.open_output_stream(tmp) as f:
                        f.write(data)
                    self.fs.move(tmp, final)
                else:
                    os.makedirs(posixpath.dirname(final) or ".", exist_ok=True)
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.fs.delete_file(tmp)
                raise

    def open_output_stream(self, *parts: str):
        """A stream to a final key; callers write objects nobody reads before a manifest names them."""
        path = self.path(*parts)
        with storage_errors(self.uri_of(*parts), writing=True):
            parent = posixpath.dirname(path)
            if not self.is_s3:  # S3 has no directories to create
                self.fs.create_dir(parent, recursive=True)
            return self.fs.open_output_stream(path)

    def list_children(self) -> list[str]:
        """Names of the files and folders directly under this location ([] when it does not exist).

        On S3 this lists objects with boto3 and reports the first path component of each, so
        only prefixes that hold objects count (some servers keep emptied "folders" around).
        """
        if self.is_s3:
            return self._list_s3_children()
        with storage_errors(self.uri):
            infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)

    def _list_s3_children(self) -> list[str]:
        import botocore.exceptions as bex

        bucket, prefix = split_s3_uri(self.uri)
        prefix = f"{prefix}/" if prefix else ""
        names: set[str] = set()
        try:
            pages = s3_client(self.storage or StorageConfig()).get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rest = obj["Key"][len(prefix):]
                    if rest and not (rest.endswith("/") and obj.get("Size", 0) == 0):  # skip folder markers
                        names.add(rest.split("/", 1)[0])
        except (bex.BotoCoreError, bex.ClientError) as exc:
            raise UserError(f"{self.uri}: cannot list ({type(exc).__name__})") from None
        return sorted(names)

    def delete(self, *parts: str) -> None:
        """Remove a folder (recursively) or a file; missing is fine."""
        path = self.path(*parts)
        with storage_errors(self.uri_of(*parts)):
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(path)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(path)


@contextlib.contextmanager
def storage_errors(uri: str, writing: bool = False) -> Iterator[None]:
    """Turn pyarrow's multi-line I/O and decoding errors (S3 or local) into one line naming the
    location. A missing file passes through for readers to name; when writing it is one line too."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError as exc:
        if not writing:
            raise
        raise UserError(f"{uri}: cannot write here ({first_line(exc)})") from None
    except OSError as exc:
        raise UserError(f"{uri}: storage error: {first_line(exc)}") from None
    except pa.ArrowInvalid as exc:  # a truncated or overwritten Parquet file, read past its checks
        raise UserError(f"{uri}: unreadable data ({first_line(exc)})") from None


def _endpoint(storage: StorageConfig) -> Optional[str]:
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    return endpoint


def _region(storage: StorageConfig) -> str:
    return storage.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def s3_filesystem(storage: StorageConfig) -> pafs.S3FileSystem:
    endpoint = _endpoint(storage)
    kwargs: dict = {
        "region": _region(storage),
        "connect_timeout": float(storage.connect_timeout_s),
        "request_timeout": float(storage.request_timeout_s),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=int(storage.max_attempts)),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    rest = uri[len(S3_SCHEME):].strip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UserError(f"{uri}: expected s3://bucket/prefix")
    return bucket, prefix


_checked: set[tuple] = set()
_checked_lock = threading.Lock()


def s3_client(storage: StorageConfig):
    """A boto3 S3 client on the standard AWS credential chain with the configured endpoint."""
    import boto3
    from botocore.config import Config as BotoConfig

    # botocore says at INFO where it found credentials ("Found credentials in environment
    # variables."), once per process: in every Ray worker and sampler actor. Only noise here.
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)

    config = BotoConfig(
        connect_timeout=float(storage.connect_timeout_s),
        read_timeout=float(storage.request_timeout_s),
        retries={"max_attempts": int(storage.max_attempts), "mode": "standard"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=_endpoint(storage), region_name=_region(storage), config=config
    )


def check_bucket(storage: StorageConfig, bucket: str, prefix: str = "", create: bool = False) -> None:
    """Check endpoint, credentials and bucket with boto3; create the bucket when asked.

    Raises UserError with one line for: no credentials, unreachable endpoint, rejected
    credentials, access denied and a missing bucket. Never echoes a credential.
    """
    import botocore.exceptions as bex

    endpoint = _endpoint(storage) or "the default AWS endpoint"
    key = (endpoint, _region(storage), bucket, create, _credential_fingerprint())
    with _checked_lock:
        if key in _checked:
            return
    where = f"s3://{bucket}"
    client = s3_client(storage)
    try:
        try:
            client.head_bucket(Bucket=bucket)
        except bex.ClientError as exc:
            code = _error_code(exc)
            if code in ("403", "AccessDenied", "Forbidden"):
                # HEAD answers carry no body: ask again with a GET to learn why.
                client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
            elif code in ("404", "NoSuchBucket", "NotFound"):
                if not create:
                    raise UserError(
                        f"{where}: bucket does not exist at {endpoint}; create it or set storage.create_bucket=true"
                    ) from None
                _create_bucket(client, bucket, _region(storage))
            else:
                raise
    except UserError:
        raise
    except bex.NoCredentialsError:
        raise UserError(
            f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment"
        ) from None
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError) as exc:
        raise UserError(
            f"{where}: S3 endpoint {endpoint} is unreachable ({type(exc).__name__}); "
            "check storage.endpoint_url or AWS_ENDPOINT_URL"
        ) from None
    except bex.ClientError as exc:
        code = _error_code(exc)
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity"):
            raise UserError(
                f"{where}: S3 credentials rejected by {endpoint} ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            ) from None
        if code in ("AccessDenied", "403", "Forbidden"):
            raise UserError(f"{where}: access denied at {endpoint} for these credentials ({code})") from None
        if code in ("NoSuchBucket", "404", "NotFound"):
            raise UserError(
                f"{where}: bucket does not exist at {endpoint}; create it or set storage.create_bucket=true"
            ) from None
        raise UserError(f"{where}: S3 request failed at {endpoint} ({code})") from None
    except bex.BotoCoreError as exc:
        raise UserError(f"{where}: S3 client error at {endpoint} ({type(exc).__name__})") from None
    with _checked_lock:
        _checked.add(key)


def abort_stale_uploads(location: Location, keep: str) -> int:
    """Abort unfinished multipart uploads under `location`/shards-* except `keep` (best effort).

    A killed writer leaves them behind; S3 keeps (and bills) their parts until aborted.
    """
    import botocore.exceptions as bex

    bucket, prefix = split_s3_uri(location.uri)
    base = f"{prefix}/" if prefix else ""
    aborted = 0
    try:
        client = s3_client(location.storage or StorageConfig())
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=base + "shards-")
        for page in pages:
            for upload in page.get("Uploads", []) or []:
                if not upload["Key"].startswith(f"{base}{keep}/"):
                    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
    except (bex.BotoCoreError, bex.ClientError):
        pass  # listing uploads may not be allowed; lifecycle rules can clean them instead
    return aborted


def _credential_fingerprint() -> str:
    """A digest of the credential settings in the environment, so a cached check is redone when they change."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE")
    return hashlib.sha256("\0".join(os.environ.get(n, "") for n in names).encode()).hexdigest()


def _error_code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def _create_bucket(client, bucket: str, region: str) -> None:
    import botocore.exceptions as bex

    kwargs: dict = {"Bucket": bucket}
    if region != DEFAULT_REGION:
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except bex.ClientError as exc:
        if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def open_location(uri: str, storage: Optional[StorageConfig] = None, create_bucket: Optional[bool] = None) -> Location:
    """A Location for a local path or s3://bucket/prefix; S3 endpoints and buckets are checked first.

    create_bucket defaults to storage.create_bucket.
    """
    storage = storage or StorageConfig()
    if uri.startswith(S3_SCHEME):
        bucket, prefix = split_s3_uri(uri)
        create = storage.create_bucket if create_bucket is None else create_bucket
        check_bucket(storage, bucket, prefix, create=bool(create))
        base = f"{bucket}/{prefix}" if prefix else bucket
        return Location(s3_filesystem(storage), base, f"{S3_SCHEME}{base}", storage)
    if "://" in uri:
        raise UserError(f"{uri}: unsupported storage scheme; expected a local path or s3://bucket/prefix")
    path = os.path.abspath(uri)
    return Location(pafs.LocalFileSystem(), path, path, storage)
