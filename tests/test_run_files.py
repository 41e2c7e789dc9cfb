"""A foreign pickle where a run's model.pt or a training checkpoint should be: refused in one
line, with nothing above it (torch used to warn about the pickle protocol first)."""
import pickle
import warnings

import pytest

from metaad_dist.data.storage import open_location
from metaad_dist.errors import UserError
from metaad_dist.train.artifacts import MODEL_FILE, load_run
from metaad_dist.train.checkpoint import read_state


class Payload:
    """Arbitrary code on unpickling: exactly what weights_only loading must refuse."""

    def __reduce__(self):
        return (print, ("this must never run",))


FOREIGN = {
    "protocol 4 with code": pickle.dumps({"model_state": Payload()}, protocol=4),
    "protocol 2, plain dict": pickle.dumps({"format_version": 1}, protocol=2),
}


def _refusal(load) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError) as info:
            load()
    assert [str(w.message) for w in caught] == []
    assert len(str(info.value).splitlines()) == 1
    return str(info.value)


@pytest.mark.parametrize("data", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_foreign_model_file_is_one_line_and_no_warning(tmp_path, capsys, data):
    location = open_location(str(tmp_path))
    location.write_bytes_atomic(data, MODEL_FILE)
    assert f"{MODEL_FILE}: not a readable metaad checkpoint" in _refusal(lambda: load_run(location))
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("data", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_foreign_checkpoint_is_one_line_and_no_warning(capsys, data):
    assert "ckpt: corrupt checkpoint" in _refusal(lambda: read_state(data, "ckpt"))
    assert "this must never run" not in capsys.readouterr().out
