"""`metaad prepare` end to end on real files: the shared UNSW-NB15 and NSL-KDD copies and small
synthetic tables, written as real Parquet to a local folder and to a real S3 server
(SeaweedFS on 127.0.0.1, see tests/s3_server.py)."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metaad_dist.config import DataConfig, MetaConfig, SourceConfig, StorageConfig
from metaad_dist.data import shard_writer
from metaad_dist.data.manifest import MANIFEST_NAME, SCHEMA_VERSION, verify_shards
from metaad_dist.data.prepare import prepare_dataset
from metaad_dist.data.prepared import PreparedSource
from metaad_dist.data.storage import open_location
from metaad_dist.errors import ConfigError, DataError, UserError

REPO = Path(__file__).resolve().parent.parent

# Counts from ../shared/datasets/*/SOURCE.md.
UNSW_COUNTS = {
    "Normal": 37000, "Generic": 18871, "Exploits": 11132, "Fuzzers": 6062, "DoS": 4089,
    "Reconnaissance": 3496, "Analysis": 677, "Backdoor": 583, "Shellcode": 378, "Worms": 44,
}
NSL_TRAIN = {"normal": 13449, "DoS": 9234, "Probe": 2289, "R2L": 209, "U2R": 11}
NSL_TEST = {"normal": 9711, "DoS": 7460, "R2L": 2885, "Probe": 2421, "U2R": 67}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, f"error is not one line: {text!r}"
    return text


def local_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --------------------------------------------------------------------------- real datasets


def _read_all(source: PreparedSource):
    return source.read(source.family_names())


def _assert_same_table(a, b) -> None:
    assert a.feature_names == b.feature_names
    np.testing.assert_array_equal(a.row_ids, b.row_ids)
    np.testing.assert_array_equal(a.families, b.families)
    np.testing.assert_array_equal(a.features, b.features)  # bit-identical float32
    if a.split is None:
        assert b.split is None
    else:
        np.testing.assert_array_equal(a.split, b.split)


def test_unsw_nb15_local_and_s3(compose, datasets_env, s3, tmp_path):
    cfg = compose("data=unsw_nb15", "data.source.row_group_size=8192", "data.source.rows_per_shard=16384")
    local = prepare_dataset(cfg.data, str(tmp_path / "unsw"), StorageConfig())
    remote = prepare_dataset(cfg.data, s3.uri("datasets/unsw"), s3.storage())

    for manifest in (local, remote):
        assert manifest["schema_version"] == SCHEMA_VERSION
        assert {f: e["rows"] for f, e in manifest["families"].items()} == UNSW_COUNTS
        assert manifest["rows"] == manifest["source_rows"] == 82332
        assert manifest["has_split"] is False and manifest["normal_families"] == ["Normal"]
        assert manifest["normalization"]["count"] == 37000
        for family, entry in manifest["families"].items():  # counts per shard add up
            assert sum(manifest["shards"][i]["rows"] for i in entry["shards"]) == entry["rows"]
        assert max(s["rows"] for s in manifest["shards"]) <= 16384
    assert len(local["families"]["Normal"]["shards"]) == 3  # 37000 rows in shards of <= 16384

    names = [f["name"] for f in local["features"]]
    assert not {"id", "label", "attack_cat"} & set(names)
    assert "proto=tcp" in names and "service=http" in names and "state=FIN" in names
    assert len(names) == 39 + sum(len(v) for v in local["categories"].values())
    assert local["features"] == remote["features"]
    assert s3.server.secret_key not in json.dumps(remote)

    local_source = PreparedSource(str(tmp_path / "unsw"))
    remote_source = PreparedSource(s3.uri("datasets/unsw"), s3.storage())
    a, b = _read_all(local_source), _read_all(remote_source)
    assert a.features.dtype == np.float32 and len(a) == 82332
    _assert_same_table(a, b)
    np.testing.assert_array_equal(np.sort(a.row_ids), np.arange(82332))
    onehot = a.features[:, [i for i, n in enumerate(names) if n.startswith("proto=")]]
    np.testing.assert_array_equal(onehot.sum(axis=1), 1.0)  # no official test file: all categories seen

    # Shards are real Parquet with bounded row groups, and their checksums hold.
    shard = local["shards"][local["families"]["Normal"]["shards"][0]]
    meta = pq.ParquetFile(tmp_path / "unsw" / local["shard_root"] / shard["path"]).metadata
    assert meta.num_row_groups == 2 and all(meta.row_group(i).num_rows <= 8192 for i in range(2))
    verify_shards(local_source.location, local)
    verify_shards(remote_source.location, remote)


def test_nsl_kdd_local_and_s3(compose, datasets_env, s3, tmp_path):
    cfg = compose("data=nsl_kdd")
    local = prepare_dataset(cfg.data, str(tmp_path / "nsl"), StorageConfig())
    remote = prepare_dataset(cfg.data, s3.uri("nsl"), s3.storage())
    for manifest in (local, remote):
        assert {f: e["train_rows"] for f, e in manifest["families"].items()} == NSL_TRAIN
        assert {f: e["test_rows"] for f, e in manifest["families"].items()} == NSL_TEST
        assert manifest["has_split"] is True and "raw_label" in manifest["columns"]
        assert manifest["normalization"]["count"] == NSL_TRAIN["normal"]
    names = [f["name"] for f in local["features"]]
    assert "difficulty" not in names and "label" not in names
    assert len(names) == 38 + sum(len(v) for v in local["categories"].values())

    a = _read_all(PreparedSource(str(tmp_path / "nsl")))
    b = _read_all(PreparedSource(s3.uri("nsl"), s3.storage()))
    _assert_same_table(a, b)
    assert set(np.unique(a.split)) == {"train", "test"}
    assert (a.split == "train").sum() == sum(NSL_TRAIN.values())
    # Categories come from the train file: train rows have exactly one per block; test rows with
    # a service never seen in training encode to all zeros (KDDTest+ has one such row).
    service = a.features[:, [i for i, n in enumerate(names) if n.startswith("service=")]].sum(axis=1)
    np.testing.assert_array_equal(service[a.split == "train"], 1.0)
    assert set(np.unique(service[a.split == "test"])) <= {0.0, 1.0}
    assert int((service == 0).sum()) == local["unseen_categories"].get("service", 0) > 0


def test_encoder_from_manifest_reencodes_raw_rows(compose, datasets_env, tmp_path):
    """What scoring needs: a raw table encoded exactly as prepare encoded it."""
    import pyarrow.csv as pacsv

    from metaad_dist.data.encoding import FeatureEncoder

    cfg = compose("data=nsl_kdd")
    manifest = prepare_dataset(cfg.data, str(tmp_path / "nsl"), StorageConfig())
    raw = pacsv.read_csv(cfg.data.source.test_files[0],
                         read_options=pacsv.ReadOptions(column_names=list(cfg.data.source.column_names)))
    x, _ = FeatureEncoder.from_manifest(manifest).encode_matrix(raw)
    table = _read_all(PreparedSource(str(tmp_path / "nsl")))
    test = table.select(table.split == "test")
    order = np.argsort(test.row_ids)
    np.testing.assert_array_equal(x, test.features[order])


def test_training_reads_only_trainable_families_from_s3(compose, datasets_env, s3):
    from metaad_dist.data.roles import FamilyRoles
    from metaad_dist.data.views import build_training_view

    cfg = compose("data=unsw_nb15")
    prepare_dataset(cfg.data, s3.uri("unsw"), s3.storage())
    source = PreparedSource(s3.uri("unsw"), s3.storage())
    roles = FamilyRoles.from_config(cfg.data, source.family_names())
    view = build_training_view(source, roles, cfg.data, MetaConfig(), 0)
    assert view.normal_x.dtype == np.float32 and view.normal_x.shape[1] == len(source.feature_names)
    for family in roles.held_out:
        assert source.rows_read[family] == source.bytes_read[family] == source.files_opened[family] == 0
    for family in roles.trainable:
        assert source.rows_read[family] == UNSW_COUNTS[family] and source.files_opened[family] >= 1


def test_digits_prepared_to_s3_trains_like_builtin(compose, s3, tmp_path, capsys):
    from metaad_dist.cli import main
    from metaad_dist.data.roles import FamilyRoles
    from metaad_dist.data.source import BuiltinSource
    from metaad_dist.data.views import build_training_view

    uri = s3.uri("digits")
    assert main(["prepare", "data=digits", f"output={uri}"]) == 0
    out = capsys.readouterr()
    assert "prepared 'digits': 1797 rows" in out.out and s3.server.secret_key not in out.out + out.err

    cfg = compose("data=digits")
    prepared, builtin = PreparedSource(uri, s3.storage()), BuiltinSource("digits")
    roles = FamilyRoles.from_config(cfg.data, prepared.family_names())
    view_p = build_training_view(prepared, roles, cfg.data, cfg.meta, 3)
    view_b = build_training_view(builtin, roles, cfg.data, cfg.meta, 3)
    np.testing.assert_array_equal(view_p.normal_x, view_b.normal_x)  # same row ids -> same splits
    for family in roles.meta:
        np.testing.assert_array_equal(view_p.budget_row_ids[family], view_b.budget_row_ids[family])

    runs = tmp_path / "runs"
    code = main(["train", "data=digits", f"data.path={uri}", "meta.episodes=3", f"storage.root={runs}",
                 "run=from-s3", "quiet=true"])
    assert code == 0, capsys.readouterr().err
    assert (runs / "from-s3").is_dir()


# --------------------------------------------------------------------------- synthetic tables

HEADER = ["id", "f1", "f2", "cat", "family"]


def synth_rows(counts: dict[str, int], seed: int = 0) -> list[list]:
    rng = np.random.default_rng(seed)
    rows = []
    for family, n in counts.items():
        for _ in range(n):
            rows.append([0, round(float(rng.normal()), 4), round(float(rng.uniform(0, 100)), 3),
                         str(rng.choice(["a", "b", "c"])), family])
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    for i, row in enumerate(rows):
        row[0] = i
    return rows


def write_csv(path: Path, rows, header=HEADER) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def synth_data(files, normal=("normal",), **source) -> DataConfig:
    settings = dict(family_column="family", drop_columns=["id"], categorical_columns=["cat"],
                    row_group_size=64, rows_per_shard=128, csv_block_size=2048)
    settings.update(source)
    src = SourceConfig(train_files=[str(f) for f in files], **settings)
    return DataConfig(name="synth", path="unused", source=src, normal=list(normal), meta=["alpha"], held_out=["beta"])


COUNTS = {"normal": 400, "alpha": 150, "beta": 90}


@pytest.fixture
def opened_shards(monkeypatch) -> list:
    """Records every shard the writer opens, to show a failure came after data was written."""
    opened = []
    original = shard_writer.ShardSetWriter._open_shard

    def spy(self, state):
        opened.append(state.family)
        return original(self, state)

    monkeypatch.setattr(shard_writer.ShardSetWriter, "_open_shard", spy)
    return opened


def test_input_formats_agree(tmp_path):
    rows = synth_rows(COUNTS)
    numeric = [[r[0], r[1], r[2], r[4]] for r in rows]
    header = ["id", "f1", "f2", "family"]
    csv = write_csv(tmp_path / "t.csv", numeric, header)
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(csv.read_bytes()))
    zipped = tmp_path / "t.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(csv, "inner/t.csv")
    table = pa.table({"id": [r[0] for r in numeric], "f1": [r[1] for r in numeric],
                      "f2": [r[2] for r in numeric], "family": [r[3] for r in numeric]})
    parquet = tmp_path / "t.parquet"
    pq.write_table(table, parquet, row_group_size=100)
    npz = tmp_path / "t.npz"
    np.savez(npz, x=np.array([[r[1], r[2]] for r in numeric]), y=np.array([r[3] for r in numeric]))

    results = {}
    for name, path in {"csv": csv, "gz": gz, "zip": zipped, "parquet": parquet, "npz": npz}.items():
        extra = {"drop_columns": [], "column_names": ["f1", "f2"]} if name == "npz" else {}
        data = synth_data([path], **{"categorical_columns": [], **extra})
        prepare_dataset(data, str(tmp_path / f"out-{name}"), StorageConfig())
        results[name] = _read_all(PreparedSource(str(tmp_path / f"out-{name}")))
    for name, result in results.items():
        assert result.feature_names == ["f1", "f2"], name
        _assert_same_table(results["csv"], result)
    assert len(results["csv"]) == sum(COUNTS.values())


def test_only_requested_partitions_are_opened(tmp_path):
    data = synth_data([write_csv(tmp_path / "t.csv", synth_rows(COUNTS))])
    manifest = prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    # Remove the held-out family's shards from disk: reads of the others must not notice.
    beta = tmp_path / "out" / manifest["shard_root"] / "family=beta"
    assert beta.is_dir()
    for path in beta.iterdir():
        path.unlink()
    source = PreparedSource(str(tmp_path / "out"))
    table = source.read(["normal", "alpha"])
    assert len(table) == COUNTS["normal"] + COUNTS["alpha"]
    assert source.rows_read == {"normal": 400, "alpha": 150}
    assert source.files_opened["beta"] == 0 and source.bytes_read["beta"] == 0
    batches = list(source.iter_batches("alpha", batch_rows=50))
    assert sum(len(b) for b in batches) == 150 and max(len(b) for b in batches) <= 50
    with pytest.raises(UserError):
        source.read(["beta"])


def test_family_names_that_need_quoting_on_s3(s3, tmp_path):
    counts = {"normal": 200, "Web Attack - XSS": 40, "a/b%c": 30}
    data = synth_data([write_csv(tmp_path / "t.csv", synth_rows(counts))])
    data.meta, data.held_out = ["Web Attack - XSS"], ["a/b%c"]
    manifest = prepare_dataset(data, s3.uri("quoted"), s3.storage())
    assert {s["path"].split("/")[0] for s in manifest["shards"]} == {
        "family=normal", "family=Web%20Attack%20-%20XSS", "family=a%2Fb%25c"}
    source = PreparedSource(s3.uri("quoted"), s3.storage())
    assert source.family_names() == sorted(counts)
    for family, n in counts.items():
        table = source.read([family])
        assert len(table) == n and set(table.families) == {family}


def test_overwrite_is_refused_then_atomic(tmp_path):
    data = synth_data([write_csv(tmp_path / "t.csv", synth_rows(COUNTS))])
    first = prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    with pytest.raises(DataError) as exc:
        prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    assert "data.source.overwrite=true" in one_line(exc)
    data.source.overwrite = True
    second = prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    assert second["shard_root"] != first["shard_root"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([MANIFEST_NAME, second["shard_root"]])


# --------------------------------------------------------------------------- a killed prepare

KILLER = """
import os, signal, sys
from metaad_dist.data import shard_writer
original = shard_writer.ShardSetWriter._close_shard
closed = []
def close_then_die(self, state):
    original(self, state)
    closed.append(state.path)
    if len(closed) == 3:  # killed between shards: three complete, more to come
        os.kill(os.getpid(), signal.SIGKILL)
shard_writer.ShardSetWriter._close_shard = close_then_die
from metaad_dist.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_prepare_leaves_no_dataset_and_rerun_succeeds(where, compose, datasets_env, s3, tmp_path):
    dest = str(tmp_path / "nsl") if where == "local" else s3.uri("killed/nsl")
    sizes = ["data.source.row_group_size=2048", "data.source.rows_per_shard=2048"]
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, "prepare", "data=nsl_kdd", f"output={dest}", *sizes],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    storage = s3.storage() if where == "s3" else StorageConfig()
    location = open_location(dest, storage)
    leftovers = location.list_children()
    assert MANIFEST_NAME not in leftovers and len(leftovers) == 1 and leftovers[0].startswith("shards-")
    with pytest.raises(DataError) as exc:
        PreparedSource(dest, storage)
    assert "no manifest.json" in one_line(exc)

    cfg = compose("data=nsl_kdd", *sizes)
    manifest = prepare_dataset(cfg.data, dest, storage)
    assert {f: e["test_rows"] for f, e in manifest["families"].items()} == NSL_TEST
    assert location.list_children() == sorted([MANIFEST_NAME, manifest["shard_root"]])  # leftovers removed
    assert len(PreparedSource(dest, storage).read(["U2R"])) == NSL_TRAIN["U2R"] + NSL_TEST["U2R"]


# --------------------------------------------------------------------------- bad input: one line, nothing written


def test_missing_file(tmp_path):
    data = synth_data([tmp_path / "nope.csv"])
    with pytest.raises(DataError) as exc:
        prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    assert "data.source.train_files[0]" in one_line(exc) and "nope.csv: file not found" in str(exc.value)
    assert local_files(tmp_path / "out") == []


def test_wrong_family_column(tmp_path):
    data = synth_data([write_csv(tmp_path / "t.csv", synth_rows(COUNTS))], family_column="attack")
    with pytest.raises(DataError) as exc:
        prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    assert "data.source.family_column='attack': no such column" in one_line(exc)
    assert local_files(tmp_path / "out") == []


def test_family_missing_from_label_map(tmp_path, opened_shards):
    rows = synth_rows(COUNTS)
    rows.append([len(rows), 0.5, 1.0, "a", "gamma"])  # the only unmapped label, at the very end
    labels = tmp_path / "map.csv"
    labels.write_text("attack,category\nnormal,normal\nalpha,alpha\nbeta,beta\n")
    data = synth_data([write_csv(tmp_path / "t.csv", rows)], label_map=str(labels))
    with pytest.raises(DataError) as exc:
        prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    assert "label 'gamma'" in one_line(exc) and "map.csv" in str(exc.value)
    assert opened_shards, "the error should come after shards were written"
    assert local_files(tmp_path / "out") == []


def test_family_empty_after_filtering(tmp_path, opened_shards):
    rows = synth_rows(COUNTS)
    for row in rows:
        if row[4] == "beta":
            row[1] = "nan"
    data = synth_data([write_csv(tmp_path / "t.csv", rows)], nonfinite_policy="drop")
    with pytest.raises(DataError) as exc:
        prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    assert "family 'beta': all 90 rows" in one_line(exc)
    assert opened_shards
    assert local_files(tmp_path / "out") == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_ragged_rows(where, s3, tmp_path, opened_shards):
    path = write_csv(tmp_path / "t.csv", synth_rows(COUNTS))
    lines = len(path.read_text().splitlines())
    path.write_text(path.read_text() + "999,1.0,2.0,a\n")
    data = synth_data([path], categorical_columns=[], drop_columns=["id", "cat"])  # no category scan: fail mid-write
    dest, storage = (str(tmp_path / "out"), StorageConfig()) if where == "local" else (s3.uri("out"), s3.storage())
    with pytest.raises(DataError) as exc:
        prepare_dataset(data, dest, storage)
    message = one_line(exc)
    assert f"ragged row at line {lines + 1}: expected 5 fields, got 4" in message and "t.csv" in message
    assert opened_shards
    assert local_files(tmp_path / "out") == [] and s3.keys() == []


def test_text_in_numeric_column(tmp_path):
    rows = synth_rows(COUNTS)
    rows[-1][2] = "lots"
    data = synth_data([write_csv(tmp_path / "t.csv", rows)])  # 'id' (dropped) comes before 'f2'
    with pytest.raises(DataError) as exc:
        prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    assert "column 'f2' holds text 'lots'" in one_line(exc)
    assert local_files(tmp_path / "out") == []


def test_nonfinite_policy_fail_and_drop(tmp_path, opened_shards):
    rows = synth_rows(COUNTS)
    bad = [i for i, row in enumerate(rows) if row[4] == "alpha"][-3:]
    rows[bad[0]][1], rows[bad[1]][2], rows[bad[2]][1] = "inf", "", "-inf"
    path = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DataError) as exc:
        prepare_dataset(synth_data([path], nonfinite_policy="fail"), str(tmp_path / "out"), StorageConfig())
    message = one_line(exc)
    assert f"data row {bad[0] + 1}: feature 'f1' is inf" in message and "nonfinite_policy=drop" in message
    assert opened_shards
    assert local_files(tmp_path / "out") == []

    manifest = prepare_dataset(synth_data([path], nonfinite_policy="drop"), str(tmp_path / "out"), StorageConfig())
    assert manifest["dropped"]["nonfinite"] == 3
    assert manifest["families"]["alpha"] == {**manifest["families"]["alpha"], "rows": 147, "dropped_nonfinite": 3}
    assert np.isfinite(_read_all(PreparedSource(str(tmp_path / "out"))).features).all()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint(s3, tmp_path):
    data = synth_data([write_csv(tmp_path / "t.csv", synth_rows(COUNTS))])
    storage = StorageConfig(endpoint_url=f"http://127.0.0.1:{_free_port()}", connect_timeout_s=1.0, max_attempts=1)
    with pytest.raises(UserError) as exc:
        prepare_dataset(data, s3.uri("out"), storage)
    assert "is unreachable" in one_line(exc) and "storage.endpoint_url" in str(exc.value)
    assert s3.keys() == []


def test_wrong_credentials(s3, tmp_path, monkeypatch):
    data = synth_data([write_csv(tmp_path / "t.csv", synth_rows(COUNTS))])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-not-the-secret")
    with pytest.raises(UserError) as exc:
        prepare_dataset(data, s3.uri("out"), s3.storage())
    message = one_line(exc)
    assert "credentials rejected" in message and "definitely-not-the-secret" not in message
    assert s3.server.secret_key not in message
    assert s3.keys() == []


def test_missing_bucket(s3, tmp_path):
    data = synth_data([write_csv(tmp_path / "t.csv", synth_rows(COUNTS))])
    uri = f"s3://{s3.bucket}-absent/out"
    with pytest.raises(UserError) as exc:
        prepare_dataset(data, uri, s3.storage())
    assert f"s3://{s3.bucket}-absent: bucket does not exist" in one_line(exc)
    assert "storage.create_bucket=true" in str(exc.value)
    buckets = [b["Name"] for b in s3.server.client().list_buckets()["Buckets"]]
    assert f"{s3.bucket}-absent" not in buckets


def test_folder_without_manifest(tmp_path, capsys):
    from metaad_dist.cli import main

    (tmp_path / "ds" / "shards-x").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        PreparedSource(str(tmp_path / "ds"))
    assert "no manifest.json, so not a prepared dataset" in one_line(exc)
    code = main(["train", "data=digits", f"data.path={tmp_path / 'ds'}", f"storage.root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("metaad: error: ") and "no manifest.json" in err and "\n" not in err


def test_manifest_with_another_schema_version(tmp_path):
    data = synth_data([write_csv(tmp_path / "t.csv", synth_rows(COUNTS))])
    prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    path = tmp_path / "out" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as exc:
        PreparedSource(str(tmp_path / "out"))
    assert f"schema_version {SCHEMA_VERSION + 1}" in one_line(exc) and "re-run `metaad prepare`" in str(exc.value)


def test_cli_prepare_error_is_one_line(datasets_env, tmp_path, capsys):
    from metaad_dist.cli import main

    code = main(["prepare", "data=unsw_nb15", f"output={tmp_path / 'out'}", "data.source.family_column=nope"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("metaad: error: data.source.family_column='nope': no such column")
    assert local_files(tmp_path / "out") == []


def test_prepare_needs_an_output_for_builtin(compose):
    from metaad_dist.data.prepare import prepare_command

    with pytest.raises(ConfigError) as exc:
        prepare_command(compose("data=digits"))
    assert "needs output=" in one_line(exc)


def test_damaged_compressed_inputs_and_unknown_encoding_are_one_line(tmp_path):
    csv = write_csv(tmp_path / "t.csv", synth_rows(COUNTS))
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(csv.read_bytes())[:-200])  # a truncated download
    fake = tmp_path / "fake.csv.gz"
    fake.write_bytes(csv.read_bytes())  # not gzip at all
    member = tmp_path / "bad.zip"
    with zipfile.ZipFile(member, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(csv, "t.csv")
    raw = bytearray(member.read_bytes())
    raw[200:260] = b"\xff" * 60  # corrupt the deflated member, keep the directory
    member.write_bytes(bytes(raw))
    for path in (cut, fake, member):
        with pytest.raises(DataError) as err:
            prepare_dataset(synth_data([path]), str(tmp_path / f"out-{path.name}"), StorageConfig())
        assert str(path) in str(err.value) and "cannot read" in str(err.value), str(err.value)
        assert len(str(err.value).splitlines()) == 1
        assert not (tmp_path / f"out-{path.name}" / "manifest.json").exists()
    with pytest.raises(ConfigError, match=r"data.source.encoding='klingon'; expected a Python codec name"):
        prepare_dataset(synth_data([csv], encoding="klingon"), str(tmp_path / "out-enc"), StorageConfig())
