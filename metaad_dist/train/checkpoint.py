"""Training checkpoints: one weights-only state file per checkpoint, for both trainers.

A checkpoint holds what a restarted run needs to continue exactly where it stopped: model and
both optimizers, the optimizer steps (hence episodes) done, the number of workers (which fixes
the episode each worker takes at each step), the sampler's state, the metric history and the
resolved config. Everything in it is tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: a checkpoint in storage can never execute code.

The local trainer writes the same state to ``<run>/checkpoint_<episodes>/state.pt`` in the run's
storage (`LocalCheckpoints`), with the same atomic write as every other object, and resumes from
the newest complete one; the Ray trainer lets Ray Train upload and register the same folders.

Atomicity: for Ray Train the state file is written to a temporary name and renamed in the worker's local
folder; Ray Train then uploads the folder and registers it as the latest checkpoint only after
the upload finished, so a run killed mid-upload resumes from the previous complete checkpoint.
A checkpoint that is registered but unreadable (truncated, overwritten, not ours) fails with
one line naming it instead of an unpickling traceback.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
from typing import Optional

import torch
from omegaconf import OmegaConf

from metaad_dist.data.storage import Location
from metaad_dist.errors import ConfigError, UserError, first_line

STATE_FILE = "state.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "learner", "step", "episodes_done", "num_workers", "sampler", "history", "config")


def checkpoint_dir_name(episodes_done: int) -> str:
    """Sortable names that say how far the run was: checkpoint_000000400."""
    return f"checkpoint_{episodes_done:09d}"


CHECKPOINT_DIR = re.compile(r"checkpoint_(\d{9})")


def state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    return buf.getvalue()


def write_state(state: dict, directory: str) -> str:
    """Write `state` as directory/state.pt via a temporary file and a rename; returns the path.

    No fsync: this is Ray Train's local staging folder, which Ray copies into the run's storage
    and deletes; the copy is what a resumed run reads (Ray registers it only once complete), and
    syncing the staged file does not make that copy durable. It cost ~2.3 ms of a 2.4 MB state's
    ~11 ms here, while the other worker waited at the report's barrier."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, STATE_FILE)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(state_bytes(state))
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


def run_checkpoints(location: Location) -> list[tuple[int, str]]:
    """(episodes, folder name) of the run's complete checkpoints (state.pt present), oldest first.
    A folder without its state file (a write killed before its rename) does not count."""
    found = [(int(m.group(1)), name) for name in location.list_children()
             if (m := CHECKPOINT_DIR.fullmatch(name))]
    return [(e, name) for e, name in sorted(found) if location.exists(name, STATE_FILE)]


def sampler_state(cfg, source, next_episode: int) -> dict:
    state: dict = {"kind": cfg.trainer.sampler, "next_episode": next_episode}
    if hasattr(source, "state_dict"):
        state["state"] = source.state_dict()
    return state


def changed_trajectory_setting(saved_yaml: Optional[str], cfg) -> Optional[tuple[str, object, object]]:
    """(key, current, saved) of the first setting that would change what a resumed run trains
    on (seed, data but its location, meta but the episode count, model), or None."""
    if saved_yaml is None:
        return None

    def settings(c) -> dict:
        c = OmegaConf.to_container(c, resolve=True)
        data = {k: v for k, v in c.get("data", {}).items() if k != "path"}
        meta = {k: v for k, v in c.get("meta", {}).items() if k != "episodes"}
        return _flatten({"seed": c.get("seed"), "data": data, "meta": meta, "model": c.get("model", {})})

    now, then = settings(cfg), settings(OmegaConf.create(saved_yaml))
    for key in sorted(set(now) | set(then)):
        if now.get(key) != then.get(key):
            return key, now.get(key), then.get(key)
    return None


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def restore(state: dict, learner, source, cfg, world: int, steps: int, where: str):
    """Load a checkpoint into the learner (and sampler); returns (step, history, seconds)."""
    if state["num_workers"] != world:
        raise ConfigError(
            f"trainer.num_workers={world} but {where} was written with {state['num_workers']} workers "
            "(the episode each worker takes depends on it); resume with the same value or use a new run name"
        )
    if state["step"] > steps:
        raise ConfigError(
            f"meta.episodes={cfg.meta.episodes} but {where} already holds {state['episodes_done']} episodes; "
            "raise meta.episodes or use a new run name"
        )
    changed = changed_trajectory_setting(state.get("config"), cfg)
    if changed is not None:
        key, now, then = changed
        raise ConfigError(
            f"{key}={now} but {where} was written with {key}={then} (it changes the episodes or the model); "
            "resume with the same setting or use a new run name"
        )
    if state["sampler"].get("kind") != cfg.trainer.sampler:
        raise ConfigError(
            f"trainer.sampler='{cfg.trainer.sampler}' but {where} was written with "
            f"'{state['sampler'].get('kind')}'; resume with the same sampler or use a new run name"
        )
    try:
        learner.load_state_dict(state["learner"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{where} does not fit this config's model/meta settings ({first[:160]}); use a new run name"
        ) from None
    if "state" in state["sampler"] and hasattr(source, "load_state_dict"):
        source.load_state_dict(state["sampler"]["state"])
    return int(state["step"]), list(state["history"]), float(state.get("seconds", 0.0))


class LocalCheckpoints:
    """Checkpoint and resume for the single-process loop (train/local.py): the Ray path's state
    format in the run's storage, every trainer.checkpoint_every episodes and at the end, the
    newest trainer.keep_checkpoints kept. Kept apart from the loop so the loop can change freely."""

    def __init__(self, cfg, location: Location):
        self.cfg = cfg
        self.location = location
        self.every = int(cfg.trainer.checkpoint_every)
        self.keep = max(1, int(cfg.trainer.keep_checkpoints))
        if self.every < 0:
            raise ConfigError(f"trainer.checkpoint_every={self.every}; expected 0 or more")
        self.config_yaml = OmegaConf.to_yaml(cfg)  # once: ~15 ms a call, as long as a dozen episodes

    def latest(self) -> Optional[tuple[dict, str]]:
        """The newest complete checkpoint's state and uri, or None."""
        done = run_checkpoints(self.location)
        if not done:
            return None
        name = done[-1][1]
        where = self.location.uri_of(name)
        return read_state(self.location.read_bytes(name, STATE_FILE), where), where

    def resume(self, learner, sampler) -> tuple[int, list, float]:
        """Load the newest checkpoint into learner and sampler: (episodes done, history, seconds)."""
        found = self.latest()
        if found is None:
            return 0, [], 0.0
        state, where = found
        return restore(state, learner, sampler, self.cfg, 1, int(self.cfg.meta.episodes), where)

    def due(self, before: int, done: int, total: int) -> bool:
        """Whether a step from `before` to `done` episodes crosses a multiple of checkpoint_every
        (steps of meta.episodes_per_step episodes), or ends the run."""
        return done >= total or (self.every > 0 and done // self.every > before // self.every)

    def save(self, learner, sampler, done: int, history: list, seconds: float) -> None:
        state = {
            "learner": learner.state_dict(),
            "step": done,
            "episodes_done": done,
            "num_workers": 1,
            "sampler": sampler_state(self.cfg, sampler, done),
            "history": history,
            "seconds": seconds,
            "config": self.config_yaml,
        }
        self.location.write_bytes_atomic(state_bytes(state), checkpoint_dir_name(done), STATE_FILE)
        for _, old in run_checkpoints(self.location)[:-self.keep]:
            self.location.delete(old)
