"""`metaad score`'s table handling: raw source columns vs encoded feature columns."""
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from metaad_dist.errors import DataError
from metaad_dist.eval.scoring import FLAG_COLUMN, SCORE_COLUMN, feature_matrix, score_table

INDEX = {"columns": ["proto", "bytes"], "categories": {"proto": ["17", "6"]}, "encoding": "index"}
ONEHOT = {"columns": ["proto", "bytes"], "categories": {"proto": ["17", "6"]}, "encoding": "onehot"}


def trained(names, scores=None):
    return SimpleNamespace(feature_names=names, anomaly_scores=lambda x, device=None: scores if scores is not None else x.sum(1))


def test_index_encoded_raw_rows_go_through_the_encoder():
    # The feature `proto` has its source column's name: raw values are categories, not codes.
    raw = pa.table({"proto": [6, 17, 99], "bytes": [1.0, 2.0, 3.0]})
    x, unseen = feature_matrix(raw, trained(["proto", "bytes"]), INDEX, "new.csv")
    np.testing.assert_array_equal(x, [[2, 1], [1, 2], [0, 3]])  # known categories 1..K, unseen 0
    assert unseen == {"proto": 1}
    text = pa.table({"proto": ["6", "17", "17"], "bytes": [1, 2, 3]})
    np.testing.assert_array_equal(feature_matrix(text, trained(["proto", "bytes"]), INDEX, "new.csv")[0][:, 0], [2, 1, 1])


def test_onehot_raw_rows_and_encoded_columns_give_the_same_features():
    names = ["proto=17", "proto=6", "bytes"]
    raw = pa.table({"proto": ["6", "17"], "bytes": [5.0, 7.0]})
    encoded = pa.table({"proto=17": [0.0, 1.0], "proto=6": [1.0, 0.0], "bytes": [5.0, 7.0], "id": [1, 2]})
    x_raw, _ = feature_matrix(raw, trained(names), ONEHOT, "raw.csv")
    x_enc, unseen = feature_matrix(encoded, trained(names), ONEHOT, "enc.parquet")
    np.testing.assert_array_equal(x_raw, x_enc)
    assert unseen == {}


def test_rescoring_a_scored_table_replaces_its_score_columns():
    table = pa.table({"proto": ["6", "17"], "bytes": [5.0, 7.0]})
    first, _ = score_table(table, trained(["proto", "bytes"], np.array([0.5, 2.0])), 1.0, "t", INDEX)
    again, _ = score_table(first, trained(["proto", "bytes"], np.array([3.0, 0.1])), 1.0, "t", INDEX)
    assert again.column_names == ["proto", "bytes", SCORE_COLUMN, FLAG_COLUMN]
    assert again.column(SCORE_COLUMN).to_pylist() == [3.0, np.float32(0.1)]
    assert again.column(FLAG_COLUMN).to_pylist() == [True, False]


@pytest.mark.parametrize("encoder", [None, ONEHOT], ids=["feature-columns", "raw-columns"])
def test_a_value_beyond_float32_is_one_line_saying_so_without_numpy_warnings(encoder):
    names = ["bytes", "proto=17", "proto=6"] if encoder is None else ["proto=17", "proto=6", "bytes"]
    columns = {"bytes": [1.0, 1e40, -1e39]}
    columns.update({"proto=17": [1.0, 0.0, 0.0], "proto=6": [0.0, 1.0, 1.0]} if encoder is None else {"proto": ["17", "6", "6"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow RuntimeWarning would fail here
        with pytest.raises(DataError) as info:
            score_table(pa.table(columns), trained(names), 1.0, "new.csv", encoder)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "data row 2: feature 'bytes' is 1e+40, beyond the float32 range" in message and "(2 of 3 rows" in message


def test_nan_and_missing_values_are_named_too():
    for values, why in [([1.0, float("nan")], "data row 2: feature 'bytes' is nan ("),
                        ([1.0, None], "data row 2: feature 'bytes' is missing (")]:
        with pytest.raises(DataError, match=re.escape(why)):
            score_table(pa.table({"bytes": values}), trained(["bytes"]), 1.0, "new.csv")
