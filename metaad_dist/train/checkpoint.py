"""Training checkpoints: one weights-only state file per Ray Train checkpoint.

A checkpoint holds what a restarted run needs to continue exactly where it stopped: model and
both optimizers, the optimizer steps (hence episodes) done, the number of workers (which fixes
the episode each worker takes at each step), the sampler's state, the metric history and the
resolved config. Everything in it is tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: a checkpoint in storage can never execute code.

Atomicity: the state file is written to a temporary name and renamed in the worker's local
folder; Ray Train then uploads the folder and registers it as the latest checkpoint only after
the upload finished, so a run killed mid-upload resumes from the previous complete checkpoint.
A checkpoint that is registered but unreadable (truncated, overwritten, not ours) fails with
one line naming it instead of an unpickling traceback.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings

import torch

from metaad_dist.errors import UserError, first_line

STATE_FILE = "state.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "learner", "step", "episodes_done", "num_workers", "sampler", "history", "config")


def checkpoint_dir_name(episodes_done: int) -> str:
    """Sortable names that say how far the run was: checkpoint_000000400."""
    return f"checkpoint_{episodes_done:09d}"


def write_state(state: dict, directory: str) -> str:
    """Write `state` as directory/state.pt via a temporary file and a rename; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, STATE_FILE)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_tensors(data: bytes):
    """torch.load(weights_only=True) of a file's bytes, on the CPU, without torch's warnings.

    Why silence them: a foreign pickle (another protocol, arbitrary objects) makes torch warn
    about the protocol before it refuses the file; our callers turn that refusal into one line,
    and the warning above it only buries it. What we write ourselves loads without warnings.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def read_state(data: bytes, where: str) -> dict:
    """Parse a state file's bytes; any problem is one UserError naming `where`."""
    hint = "delete this checkpoint folder to resume from an older one, or train under a new run name"
    try:
        state = load_tensors(data)
    except Exception as exc:  # noqa: BLE001 - every unpickling failure means a corrupt or foreign file
        raise UserError(f"{where}: corrupt checkpoint ({type(exc).__name__}); {hint}") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise UserError(f"{where}: corrupt checkpoint (not a metaad training state); {hint}")
    if state["format_version"] != FORMAT_VERSION:
        raise UserError(f"{where}: checkpoint format_version {state['format_version']}; expected {FORMAT_VERSION}")
    return state


def save_checkpoint(state: dict):
    """A ray.train.Checkpoint in a fresh local folder (Ray uploads it, then deletes the folder)."""
    from ray.train import Checkpoint

    directory = tempfile.mkdtemp(prefix="metaad-ckpt-")
    write_state(state, directory)
    return Checkpoint.from_directory(directory)


def checkpoint_uri(checkpoint) -> str:
    path = checkpoint.path
    return f"s3://{path}" if type(checkpoint.filesystem).__name__ == "S3FileSystem" else path


def load_checkpoint(checkpoint) -> dict:
    """The state in a ray.train.Checkpoint, read straight from its storage (local or S3)."""
    where = checkpoint_uri(checkpoint)
    file = f"{checkpoint.path.rstrip('/')}/{STATE_FILE}"
    try:
        with checkpoint.filesystem.open_input_stream(file) as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(
            f"{where}: corrupt checkpoint (missing {STATE_FILE}); delete this checkpoint folder to resume from an "
            "older one, or train under a new run name"
        ) from None
    except OSError as exc:
        raise UserError(f"{where}: cannot read checkpoint: {first_line(exc)}") from None
    return read_state(data, where)
