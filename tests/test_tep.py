"""The Tennessee Eastman field through `metaad prepare`: headerless whitespace files (one stored
transposed) and families from file names and row ranges (data.source.family_rules), on the
shared Braatz copy and on small synthetic files; malformed rules are one-line errors."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from metaad_dist.config import DataConfig, FamilyRule, SourceConfig, StorageConfig
from metaad_dist.data.prepare import prepare_command, prepare_dataset
from metaad_dist.data.prepared import PreparedSource
from metaad_dist.errors import ConfigError, DataError, UserError


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, f"error is not one line: {text!r}"
    return text


def by_row_id(table):
    order = np.argsort(table.row_ids)
    return table.features[order], table.families[order], table.split[order]


def test_prepare_tep_gives_every_family_with_its_rows(compose, datasets_env, tmp_path):
    """SOURCE.md: normal 500 train (d00.dat, transposed) + 960 (d00_te) + 21 x 160 pre-fault test
    rows; each fault 480 train + 800 test rows."""
    out = tmp_path / "tep"
    prepare_command(compose("data=tep", f"output={out}", "quiet=true"))
    source = PreparedSource(str(out))
    families = source.manifest["families"]
    assert set(families) == {"normal"} | {f"fault{i}" for i in range(1, 22)}
    assert (families["normal"]["train_rows"], families["normal"]["test_rows"]) == (500, 960 + 21 * 160)
    for i in range(1, 22):
        assert (families[f"fault{i}"]["train_rows"], families[f"fault{i}"]["test_rows"]) == (480, 800)
    names = [f["name"] for f in source.manifest["features"]]
    assert len(names) == 52 and (names[0], names[-1]) == ("xmeas_1", "xmv_11")

    raw = datasets_env / "tep_braatz"
    x, fam, split = by_row_id(source.read(["normal", "fault3"]))
    d00 = np.loadtxt(gzip.open(raw / "d00.dat.gz")).T  # stored 52 x 500
    np.testing.assert_allclose(x[(fam == "normal") & (split == "train")], d00, rtol=1e-6)
    d03_te = np.loadtxt(gzip.open(raw / "d03_te.dat.gz"))
    np.testing.assert_allclose(x[(fam == "fault3") & (split == "test")], d03_te[160:], rtol=1e-6)
    test_normal = x[(fam == "normal") & (split == "test")]
    assert any(np.allclose(row, d03_te[0], rtol=1e-6) for row in test_normal)  # a pre-fault row is normal


# --------------------------------------------------------------------------- synthetic files

RULES = [
    FamilyRule(match=r"^n\d", family="normal"),
    FamilyRule(match=r"_te\.", rows=[0, 3], family="normal"),
    FamilyRule(match=r"^f(\d+)", family=r"fault\1"),
]


def write_ws(path: Path, x: np.ndarray) -> Path:
    text = "\n".join("  " + "   ".join(f"{v:.6e}" for v in row) for row in x) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def ws_data(train, test=(), **source) -> DataConfig:
    settings = dict(format="whitespace", family_column="fault", family_rules=list(RULES),
                    row_group_size=4, rows_per_shard=8, csv_block_size=64)
    settings.update(source)
    src = SourceConfig(train_files=[str(f) for f in train], test_files=[str(f) for f in test], **settings)
    return DataConfig(name="ws", path="unused", source=src, normal=["normal"])


def test_whitespace_reader_transposes_and_labels_by_rule(tmp_path):
    rng = np.random.default_rng(0)
    normal, fault, fault_te = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 5, rng.normal(size=(7, 3)) + 9
    train = [write_ws(tmp_path / "n0.dat.gz", normal.T), write_ws(tmp_path / "f7.dat", fault)]
    test = [write_ws(tmp_path / "f7_te.dat", fault_te)]
    data = ws_data(train, test, transpose_files=[r"^n0"], column_names=["a", "b", "c"])
    manifest = prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    families = manifest["families"]
    assert (families["normal"]["train_rows"], families["normal"]["test_rows"]) == (6, 3)
    assert (families["fault7"]["train_rows"], families["fault7"]["test_rows"]) == (5, 4)
    x, fam, split = by_row_id(PreparedSource(str(tmp_path / "out")).read(["normal", "fault7"]))
    np.testing.assert_allclose(x[(fam == "normal") & (split == "train")], normal, rtol=1e-6)
    np.testing.assert_allclose(x[(fam == "normal") & (split == "test")], fault_te[:3], rtol=1e-6)
    np.testing.assert_allclose(x[(fam == "fault7") & (split == "test")], fault_te[3:], rtol=1e-6)
    assert [f["name"] for f in manifest["features"]] == ["a", "b", "c"]


@pytest.mark.parametrize("rules, message", [
    ([FamilyRule(match="f(", family="x")], "data.source.family_rules[0].match='f(': not a regular expression"),
    ([FamilyRule(match="f", family="")], "data.source.family_rules[0].family is empty"),
    ([RULES[0], FamilyRule(match="f", rows=[5], family="x")], "data.source.family_rules[1].rows=[5]; expected"),
    ([FamilyRule(match="f", rows=[4, 2], family="x")], "data.source.family_rules[0].rows=[4, 2]; expected"),
    ([FamilyRule(match=r"f(\d)", family=r"fault\2")], r"data.source.family_rules[0].family='fault\\2': no group '2'"),
])
def test_bad_family_rules_are_one_line_config_errors(tmp_path, rules, message):
    data = ws_data([write_ws(tmp_path / "f1.dat", np.ones((4, 2)))], family_rules=rules)
    with pytest.raises(ConfigError) as exc:
        prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    assert message in one_line(exc)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_rows_no_rule_covers_name_the_file_and_row(tmp_path):
    rules = [FamilyRule(match="^f", rows=[0, 3], family="normal"), FamilyRule(match="^n", family="other")]
    data = ws_data([write_ws(tmp_path / "f1.dat", np.ones((5, 2)))], family_rules=rules)
    with pytest.raises(DataError) as exc:
        prepare_dataset(data, str(tmp_path / "out"), StorageConfig())
    message = one_line(exc)
    assert "f1.dat: data row 3 (0-based) is covered by no data.source.family_rules entry" in message
    assert "data.source.family_rules[0]" in message and "[1]" not in message


def test_unknown_rule_key_is_one_line(compose, datasets_env):
    with pytest.raises(UserError) as exc:
        compose("data=tep", "data.source.family_rules=[{match:a,familly:b}]")
    assert "familly" in one_line(exc)


def test_whitespace_file_problems_are_one_line(tmp_path):
    ragged = tmp_path / "f1.dat"
    ragged.write_text("1 2 3\n4 5 6\n7 8\n")
    with pytest.raises(DataError) as exc:
        prepare_dataset(ws_data([ragged]), str(tmp_path / "a"), StorageConfig())
    assert "f1.dat: ragged row at line 3: expected 3 fields, got 2" in one_line(exc)

    text = tmp_path / "f2.dat"
    text.write_text("1 2\n3 x\n")
    with pytest.raises(DataError) as exc:
        prepare_dataset(ws_data([text]), str(tmp_path / "b"), StorageConfig())
    assert "f2.dat: line 2 holds 'x' where a number is expected" in one_line(exc)

    with pytest.raises(DataError) as exc:
        prepare_dataset(ws_data([text], column_names=["a", "b", "c"]), str(tmp_path / "c"), StorageConfig())
    assert "f2.dat: 2 columns, but data.source.column_names has 3 names" in one_line(exc)

    csv = tmp_path / "f3.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError) as exc:
        prepare_dataset(ws_data([csv], format="csv", transpose_files=["f3"]), str(tmp_path / "d"), StorageConfig())
    assert "only data.source.format=whitespace files can be transposed" in one_line(exc)
