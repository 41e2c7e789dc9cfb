"""A trained run in storage: model.pt (weights, scaler, roles), config.yaml, metrics.json.

Everything in model.pt is tensors, strings, numbers, lists and dicts, so it loads with
``torch.load(weights_only=True)``: a checkpoint can never execute code.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from metaad_dist.data.scaling import FeatureScaler
from metaad_dist.data.storage import Location
from metaad_dist.errors import UserError, first_line, one_line
from metaad_dist.model.networks import MetaADModel
from metaad_dist.train.checkpoint import load_tensors

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
FORMAT_VERSION = 1


SCORE_BATCH = 65536  # rows per forward pass when scoring: bounded memory on any table size


def score_scaled_rows(model: MetaADModel, xs, score: str, device: torch.device | None = None, batch: int = SCORE_BATCH):
    """Anomaly scores of already scaled rows, in batches on `device` (the model moves there)."""
    device = device or torch.device("cpu")
    model.to(device).eval()
    out = [
        model.anomaly_score(torch.as_tensor(xs[i:i + batch], dtype=torch.float32, device=device), score).cpu()
        for i in range(0, len(xs), batch)
    ]
    return torch.cat(out).numpy() if out else torch.zeros(0).numpy()


@dataclass
class TrainedModel:
    model: MetaADModel
    scaler: FeatureScaler
    feature_names: list[str]
    score: str  # msp | energy

    def anomaly_scores(self, x, device: torch.device | None = None, batch: int = SCORE_BATCH):
        return score_scaled_rows(self.model, self.scaler.transform(x), self.score, device, batch)


def save_run(location: Location, trained: TrainedModel, model_args: dict, extra: dict, config, metrics: dict) -> None:
    payload = {
        "format_version": FORMAT_VERSION,
        "model_args": model_args,
        "model_state": trained.model.state_dict(),
        "scaler": trained.scaler.state_dict(),
        "feature_names": list(trained.feature_names),
        "score": trained.score,
        **extra,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    location.write_bytes_atomic(OmegaConf.to_yaml(config).encode(), CONFIG_FILE)
    location.write_bytes_atomic(json.dumps(metrics, indent=2).encode(), METRICS_FILE)
    location.write_bytes_atomic(buf.getvalue(), MODEL_FILE)  # last: its presence marks a complete run


RUN_KEYS = ("format_version", "model_args", "model_state", "scaler", "feature_names", "score", "threshold")


def load_run(location: Location) -> tuple[TrainedModel, dict]:
    where = f"{location.uri}/{MODEL_FILE}"
    if not location.exists(MODEL_FILE):
        raise UserError(f"{location.uri}: no trained run here (missing {MODEL_FILE}); run `metaad train` first")
    try:
        payload = load_tensors(location.read_bytes(MODEL_FILE))
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise UserError(f"{where}: not a readable metaad checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in RUN_KEYS):
        raise UserError(f"{where}: not a metaad trained run (expected the keys {list(RUN_KEYS)})")
    if payload["format_version"] != FORMAT_VERSION:
        raise UserError(f"{where}: format_version {payload['format_version']}; expected {FORMAT_VERSION}")
    try:
        model = MetaADModel(**payload["model_args"])
        model.load_state_dict(payload["model_state"])
        scaler = FeatureScaler.from_state_dict(payload["scaler"])
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"{where}: the weights do not fit the recorded model ({first_line(exc)[:200]})") from None
    model.eval()
    return TrainedModel(model, scaler, payload["feature_names"], payload["score"]), payload


def load_run_config(location: Location):
    """The run's config.yaml on the current schema: a run written before a setting existed gets
    its default; an unknown key or ill-typed value is one line naming the file."""
    from metaad_dist.config import Config

    if not location.exists(CONFIG_FILE):
        raise UserError(f"{location.uri}: no trained run here (missing {CONFIG_FILE})")
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(location.read_bytes(CONFIG_FILE).decode()))
    except Exception as exc:  # noqa: BLE001 - YAML and schema errors of a stored file
        raise UserError(f"{location.uri}/{CONFIG_FILE}: {one_line(exc)}") from None
