"""The storage layer: one code path for local folders and s3:// on a real S3 server (SeaweedFS)."""
from __future__ import annotations

import pytest

from metaad_dist.config import StorageConfig
from metaad_dist.data.storage import open_location
from metaad_dist.errors import UserError


@pytest.mark.parametrize("where", ["local", "s3"])
def test_location_round_trip(where, s3, tmp_path):
    uri = str(tmp_path / "root") if where == "local" else s3.uri("root")
    storage = s3.storage() if where == "s3" else StorageConfig()
    location = open_location(uri, storage)
    assert location.list_children() == [] and not location.exists("a.json")

    location.write_bytes_atomic(b'{"x": 1}', "a.json")
    with location.open_output_stream("sub/dir/b.bin") as f:
        f.write(b"\x00" * 1000)
    assert location.read_bytes("a.json") == b'{"x": 1}'
    assert location.child("sub").read_bytes("dir", "b.bin") == b"\x00" * 1000
    assert location.list_children() == ["a.json", "sub"]  # no temporary siblings left behind

    location.delete("sub")
    location.delete("missing")  # deleting what is not there is fine
    assert location.list_children() == ["a.json"]
    with pytest.raises(UserError) as exc:
        location.read_bytes("nope.json")
    assert str(exc.value) == f"{location.uri}/nope.json: not found"
    if where == "s3":
        assert s3.keys("root/") == ["root/a.json"]


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    location = open_location(str(tmp_path / "root"), StorageConfig())
    location.write_bytes_atomic(b"old", "a.json")
    (tmp_path / "root" / "folder").mkdir()
    with pytest.raises(UserError, match="folder: storage error"):
        location.write_bytes_atomic(b"new", "folder")  # a folder is in the way of the rename
    location.write_bytes_atomic(b"new", "a.json")
    assert location.read_bytes("a.json") == b"new"
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["a.json", "folder"]


def test_bucket_is_created_only_when_asked(s3):
    bucket = f"{s3.bucket}-new"
    with pytest.raises(UserError) as exc:
        open_location(f"s3://{bucket}/x", s3.storage())
    assert "bucket does not exist" in str(exc.value)
    location = open_location(f"s3://{bucket}/x", s3.storage(create_bucket=True))
    location.write_bytes_atomic(b"ok", "f.txt")
    assert s3.server.client().get_object(Bucket=bucket, Key="x/f.txt")["Body"].read() == b"ok"


def test_no_credentials(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError) as exc:
        open_location(s3.uri("x"), s3.storage())
    message = str(exc.value)
    assert "no AWS credentials found" in message and "\n" not in message


def test_endpoint_from_environment(s3):
    # AWS_ENDPOINT_URL (set by the fixture) is used when storage.endpoint_url is not.
    location = open_location(s3.uri("env"), StorageConfig())
    location.write_bytes_atomic(b"1", "f")
    assert s3.keys("env/") == ["env/f"]


def test_unsupported_scheme():
    with pytest.raises(UserError) as exc:
        open_location("gs://bucket/x")
    assert "unsupported storage scheme" in str(exc.value)


def test_forwarded_aws_keys_never_show_in_text(monkeypatch):
    from metaad_dist.data.credentials import AwsSecrets, settings_env

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    secrets = AwsSecrets.from_environ()
    shown = f"{secrets} {secrets!r} {[secrets]} {dict(aws=secrets)}"
    assert "s3cr3t-value" not in shown and "AKIDEXAMPLE" not in shown
    assert "AWS_SECRET_ACCESS_KEY" in shown  # which keys travel is visible, not their values
    assert settings_env()["AWS_REGION"] == "eu-west-3"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(settings_env())

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    secrets.install()  # as a Ray worker does with the driver's keys
    import os

    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value"
