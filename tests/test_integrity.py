"""Issue 22: nothing trains on damaged data, nothing is lost to a kill, nothing escapes.

Real prepared digits datasets (local folder and the SeaweedFS S3 server) damaged the ways a user
or a disk would damage them; each is one line naming the shard and rc 2 from `metaad train`.
Also the run folder's life (none after a failed setup, a finished run kept), `--version`, plain
run names, and a local run killed with SIGKILL that resumes to the same final model.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from metaad_dist.cli import main

REPO = Path(__file__).resolve().parent.parent
QUICK = ["data=digits", "meta.episodes=3", "quiet=true", "model.memory_rows=0"]


def error_of(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("metaad: error: "), err
    return err


class Prepared:
    """A prepared digits dataset at a local folder or an S3 prefix, with raw byte access to edit it."""

    def __init__(self, uri: str, s3=None):
        self.uri, self.s3 = uri, s3

    def _key(self, *parts: str) -> str:
        return "/".join([self.uri[len(f"s3://{self.s3.bucket}/"):], *parts])

    def read(self, *parts: str) -> bytes:
        if self.s3 is None:
            return Path(self.uri, *parts).read_bytes()
        return self.s3.server.client().get_object(Bucket=self.s3.bucket, Key=self._key(*parts))["Body"].read()

    def write(self, data: bytes, *parts: str) -> None:
        if self.s3 is None:
            Path(self.uri, *parts).write_bytes(data)
        else:
            self.s3.server.client().put_object(Bucket=self.s3.bucket, Key=self._key(*parts), Body=data)

    @property
    def manifest(self) -> dict:
        return json.loads(self.read("manifest.json"))

    def save_manifest(self, manifest: dict) -> None:
        self.write(json.dumps(manifest).encode(), "manifest.json")

    def training_shard(self) -> tuple[int, str]:
        """(index, path) of the first shard of the first normal family: every training run reads it."""
        m = self.manifest
        i = m["families"][m["normal_families"][0]]["shards"][0]
        return i, m["shards"][i]["path"]

    def shard_bytes(self, path: str) -> bytes:
        return self.read(self.manifest["shard_root"], path)

    def replace_shard(self, index: int, data: bytes, fix_manifest: bool) -> None:
        m = self.manifest
        self.write(data, m["shard_root"], m["shards"][index]["path"])
        if fix_manifest:  # as if prepare had written it: only the content check can object
            m["shards"][index].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            self.save_manifest(m)

    def storage_args(self) -> list[str]:
        return [f"storage.endpoint_url={self.s3.endpoint_url}"] if self.s3 is not None else []


@pytest.fixture(params=["local", "s3"])
def prepared(request, tmp_path, capsys):
    """A fresh uncompressed digits dataset (so flipped bytes reach column data, not a codec)."""
    if request.param == "local":
        ds = Prepared(str(tmp_path / "digits"))
    else:
        s3 = request.getfixturevalue("s3")
        ds = Prepared(s3.uri("digits"), s3)
    assert main(["prepare", "data=digits", f"output={ds.uri}", "data.source.compression=none",
                 *ds.storage_args()]) == 0
    capsys.readouterr()
    return ds


def train_args(ds: Prepared, tmp_path: Path, *more: str) -> list[str]:
    return ["train", *QUICK, f"data.path={ds.uri}", f"storage.root={tmp_path / 'runs'}", "run=damaged",
            *ds.storage_args(), *more]


def flip_column_bytes(data: bytes, column: str) -> bytes:
    """8 bytes inverted in the middle of a column chunk's values: same size, same footer."""
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    chunk = next(meta.column(j) for j in range(meta.num_columns) if meta.column(j).path_in_schema == column)
    at = chunk.data_page_offset + chunk.total_compressed_size // 2
    raw = bytearray(data)
    raw[at:at + 8] = bytes(b ^ 0xFF for b in raw[at:at + 8])
    return bytes(raw)


def rewritten(data: bytes, change) -> bytes:
    table = change(pq.read_table(io.BytesIO(data)))
    out = io.BytesIO()
    pq.write_table(table, out, compression="none")
    return out.getvalue()


def assert_names_the_shard(err: str, ds: Prepared, path: str) -> None:
    assert ds.uri in err and f"shard {path}" in err and "re-run metaad prepare" in err, err


def test_wrong_sha256_in_the_manifest(prepared, tmp_path, capsys):
    i, path = prepared.training_shard()
    m = prepared.manifest
    m["shards"][i]["sha256"] = "0" * 64
    prepared.save_manifest(m)
    err = error_of(capsys, *train_args(prepared, tmp_path))
    assert_names_the_shard(err, prepared, path)
    assert "does not match its sha256 in manifest.json" in err
    assert not (tmp_path / "runs" / "damaged").exists()  # a failed setup leaves no run folder


def test_same_size_byte_flip_in_an_uncompressed_shard(prepared, tmp_path, capsys):
    i, path = prepared.training_shard()
    original = prepared.shard_bytes(path)
    flipped = flip_column_bytes(original, "pixel_20")
    assert len(flipped) == len(original) and flipped != original
    prepared.replace_shard(i, flipped, fix_manifest=False)
    err = error_of(capsys, *train_args(prepared, tmp_path))
    assert_names_the_shard(err, prepared, path)
    assert "does not match its sha256" in err
    # The check is what catches it: switched off, the flipped rows decode and train silently.
    assert main(train_args(prepared, tmp_path, "storage.verify_checksums=false", "run=trusted")) == 0


def test_truncated_features_list(prepared, tmp_path, capsys):
    m = prepared.manifest
    m["features"] = m["features"][:60]
    prepared.save_manifest(m)
    err = error_of(capsys, *train_args(prepared, tmp_path))
    assert "has columns manifest.json does not list (e.g. 'pixel_60', 4 in all)" in err, err
    assert "re-run metaad prepare" in err


@pytest.mark.parametrize("change, message", [
    (lambda t: t.append_column("extra", pa.array([0.0] * t.num_rows, pa.float32())),
     "has columns manifest.json does not list (e.g. 'extra', 1 in all)"),
    (lambda t: t.drop_columns(["pixel_63"]), "lacks columns manifest.json lists (e.g. 'pixel_63', 1 in all)"),
    (lambda t: t.set_column(t.schema.get_field_index("pixel_5"), "pixel_5", t.column("pixel_5").cast(pa.float64())),
     "stores column 'pixel_5' as double, not float"),
    (lambda t: t.slice(0, t.num_rows - 1), "rows, not"),
], ids=["extra-column", "missing-column", "other-dtype", "fewer-rows"])
def test_shard_that_disagrees_with_the_manifest(prepared, tmp_path, capsys, change, message):
    i, path = prepared.training_shard()
    prepared.replace_shard(i, rewritten(prepared.shard_bytes(path), change), fix_manifest=True)
    err = error_of(capsys, *train_args(prepared, tmp_path))
    assert_names_the_shard(err, prepared, path)
    assert message in err, err


def test_family_rows_that_do_not_add_up(prepared, tmp_path, capsys):
    m = prepared.manifest
    family = m["normal_families"][0]
    m["families"][family]["rows"] += 1
    prepared.save_manifest(m)
    err = error_of(capsys, *train_args(prepared, tmp_path))
    assert f"family '{family}' has" in err and "but its shards hold" in err and "manifest.json" in err


def test_codec_error_names_the_shard(tmp_path, capsys):
    """With the check off a damaged snappy shard still fails in one line that names it."""
    ds = Prepared(str(tmp_path / "snappy"))
    assert main(["prepare", "data=digits", f"output={ds.uri}", "data.source.compression=snappy"]) == 0
    i, path = ds.training_shard()
    data = ds.shard_bytes(path)
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    raw = bytearray(data)
    for j in range(meta.num_columns):  # damage every feature chunk: some decode must fail
        chunk = meta.column(j)
        at = chunk.data_page_offset + chunk.total_compressed_size - 6
        raw[at:at + 4] = bytes(b ^ 0xFF for b in raw[at:at + 4])
    ds.replace_shard(i, bytes(raw), fix_manifest=False)
    capsys.readouterr()
    err = error_of(capsys, *train_args(ds, tmp_path, "storage.verify_checksums=false"))
    assert f"{ds.uri}/{ds.manifest['shard_root']}/{path}" in err, err
    assert "does not match its sha256" in error_of(capsys, *train_args(ds, tmp_path))


def test_each_shard_is_hashed_once_per_process(tmp_path, monkeypatch):
    from metaad_dist.data import manifest as manifest_module
    from metaad_dist.data.prepared import PreparedSource

    ds = Prepared(str(tmp_path / "d"))
    assert main(["prepare", "data=digits", f"output={ds.uri}"]) == 0
    hashed = []
    original = manifest_module.ShardCheck.check_hash
    monkeypatch.setattr(manifest_module.ShardCheck, "check_hash",
                        lambda self, i, digest: (hashed.append(i), original(self, i, digest))[1])
    for _ in range(2):
        source = PreparedSource(ds.uri)
        source.read(source.family_names())
    assert sorted(hashed) == list(range(len(ds.manifest["shards"])))


# --------------------------------------------------------------------------- the run folder and names


def test_failed_setup_leaves_no_run_folder(capsys, tmp_path):
    root = tmp_path / "runs"
    for bad in ("meta.k_shot=500", "data.normal=[nope]", "meta.episodes=-1"):
        error_of(capsys, "train", "data=digits", f"storage.root={root}", "run=bad", bad)
        assert not (root / "bad").exists(), bad


def test_finished_run_is_not_replaced_without_overwrite(capsys, tmp_path):
    args = ["train", *QUICK, f"storage.root={tmp_path}", "run=done"]
    assert main(args) == 0
    model = (tmp_path / "done" / "model.pt").read_bytes()
    err = error_of(capsys, *args)
    assert "run 'done'" in err and "is finished (3 episodes)" in err and "overwrite=true" in err
    assert (tmp_path / "done" / "model.pt").read_bytes() == model
    assert main([*args, "overwrite=true", "seed=1"]) == 0
    assert (tmp_path / "done" / "model.pt").read_bytes() != model


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "/abs", ".hidden"])
def test_run_names_are_plain(capsys, tmp_path, name):
    err = error_of(capsys, "train", *QUICK, f"storage.root={tmp_path / 'runs'}", f"run={name}")
    assert f"run='{name}': a run name must be a plain name" in err
    assert not any(tmp_path.rglob("model.pt")) and not (tmp_path / "x").exists()


def test_version(capsys):
    import ray

    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("metaad 0.") and f"ray {ray.__version__}" in out and f"torch {torch.__version__}" in out
    done = subprocess.run([sys.executable, "-m", "metaad_dist.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == out


# --------------------------------------------------------------------------- local checkpoints


KILL = ["data=digits", "meta.episodes=120", "trainer.checkpoint_every=30", "trainer.log_every=10",
        "trainer.keep_checkpoints=2", "model.hidden_dims=[32]", "model.embed_dim=16",
        "trainer.fold_processes=2"]  # a fusion fold process beside the loop, whatever the cores


def children_of(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state: ppid
                    found.append(int(entry))
        except OSError:  # ended meanwhile
            continue
    return found


def ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie: ended, not yet reaped
    except OSError:
        return True


def test_local_run_killed_after_a_checkpoint_resumes_bit_identical(tmp_path):
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "metaad_dist.cli", "train", *KILL, f"storage.root={root}", "run=killme"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    killed_at = None
    deadline = time.time() + 300
    for line in proc.stdout:  # progress lines: kill once a checkpoint exists and training goes on
        if "episode" in line and (root / "killme" / "checkpoint_000000030" / "state.pt").exists():
            killed_at = int(line.split("episode ")[1].split("/")[0])
            if killed_at > 30:
                folds = children_of(proc.pid)
                proc.send_signal(signal.SIGKILL)
                break
        assert time.time() < deadline
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and killed_at is not None and killed_at < 120
    assert folds, "no fold process beside the loop"
    gone = time.time() + 15
    while not all(ended(pid) for pid in folds) and time.time() < gone:
        time.sleep(0.2)
    assert all(ended(pid) for pid in folds), "a fold process outlived its killed parent"
    assert not (root / "killme" / "model.pt").exists()

    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "[local] resuming from" in resumed.stdout
    last = resumed.stdout.strip().splitlines()[-1]
    resumed_at = int(resumed.stdout.split("at episode ")[1].split()[0])
    assert resumed_at >= 30 and resumed_at % 30 == 0
    assert f"({120 - resumed_at} episodes trained by this process, 120 in total" in last, last

    straight = subprocess.run([*cmd[:-1], "run=straight"], capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=600)
    assert straight.returncode == 0, straight.stderr
    assert "(120 episodes trained by this process, 120 in total" in straight.stdout.strip().splitlines()[-1]
    a = torch.load(root / "killme" / "model.pt", weights_only=True)["model_state"]
    b = torch.load(root / "straight" / "model.pt", weights_only=True)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    kept = sorted(p.name for p in (root / "killme").iterdir() if p.name.startswith("checkpoint_"))
    assert kept == ["checkpoint_000000090", "checkpoint_000000120"]  # trainer.keep_checkpoints=2
    m = json.loads((root / "killme" / "metrics.json").read_text())
    fusion = m["trainer"].pop("fusion")  # the fold networks, trained after the resume
    folds = sorted(f for by_process in fusion["folds_by_process"] for f in by_process)
    assert folds and folds == sorted(set(folds)) and len(fusion["folds_by_process"]) == fusion["fold_processes"]
    assert m["trainer"] == {"name": "local", "episodes_trained": 120 - resumed_at, "resumed_at_episode": resumed_at}
    assert [h["episode"] for h in m["history"]] == list(range(1, 121))  # history carried over


def test_corrupt_local_checkpoint_is_one_line(capsys, tmp_path):
    args = ["train", *QUICK, f"storage.root={tmp_path}", "run=c", "meta.episodes=4", "trainer.checkpoint_every=2"]
    assert main(args) == 0
    (tmp_path / "c" / "model.pt").unlink()  # unfinished: the rerun resumes from the newest checkpoint
    (tmp_path / "c" / "checkpoint_000000004" / "state.pt").write_bytes(b"not a checkpoint")
    err = error_of(capsys, *args)
    assert f"{tmp_path}/c/checkpoint_000000004: corrupt checkpoint" in err


# --------------------------------------------------------------------------- log noise


def test_no_credential_line_from_boto3(monkeypatch, caplog):
    """botocore logs where it found keys at INFO, in every Ray worker and sampler actor."""
    import logging

    from metaad_dist.config import StorageConfig
    from metaad_dist.data.storage import s3_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testsecret")
    logging.getLogger("botocore.credentials").setLevel(logging.NOTSET)  # as a fresh worker process
    with caplog.at_level(logging.INFO):
        s3_client(StorageConfig(endpoint_url="http://127.0.0.1:9"))
    assert not [r for r in caplog.records if "Found credentials" in r.getMessage()]


def test_read_only_episode_arrays_raise_no_torch_warning():
    """Episodes from Ray's object store are read-only; the learner shares them without a warning."""
    import warnings

    import numpy as np

    from metaad_dist.config import MetaConfig
    from metaad_dist.meta.learner import MetaLearner
    from metaad_dist.model.networks import MetaADModel

    learner = MetaLearner(MetaADModel(in_dim=3, num_classes=2, hidden_dims=[4], embed_dim=2), MetaConfig(),
                          torch.device("cpu"))
    x = np.ones((2, 3), dtype=np.float32)
    x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert learner._tensor(x).shape == (2, 3)
