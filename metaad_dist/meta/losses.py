"""Inner and outer objectives of the bi-level update (docs/method.md section 5).

Both take a model and tensors and return (loss, metrics); nothing here knows about episodes,
optimizers or Ray.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from metaad_dist.config import MetaConfig
from metaad_dist.model.networks import MetaADModel

EPS = 1e-6


def confidence_bce(confidence: torch.Tensor, target: float) -> torch.Tensor:
    """BCE between the max-softmax confidence S(x) and a constant target (1 normal, 0 anomaly)."""
    s = confidence.clamp(EPS, 1 - EPS)
    return F.binary_cross_entropy(s, torch.full_like(s, target))


def margin_penalty(s_normal: torch.Tensor, s_anomaly: torch.Tensor, margin: float, episodes: int = 1) -> torch.Tensor:
    """relu(margin - (mean S(normal) - mean S(anomaly))): normals must be clearly more confident.

    With rows of `episodes` equal-sized episodes stacked, the mean over episodes of each one's penalty."""
    gap = s_normal.view(episodes, -1).mean(dim=1) - s_anomaly.view(episodes, -1).mean(dim=1)
    return F.relu(margin - gap).mean()


def inner_loss(model: MetaADModel, x: torch.Tensor, y: torch.Tensor, cfg: MetaConfig):
    """Shape a normal manifold: confidence BCE + class (or pseudo-class) CE + reconstruction.

    The class term is what keeps the literal one-class BCE from collapsing (docs/method.md pitfall).
    """
    z = model.encoder(x)
    logits = model.logits(z, x)
    conf = model.confidence_from_logits(logits)
    bce = confidence_bce(conf, 1.0)
    ce = F.cross_entropy(logits, y)
    loss = cfg.inner_bce_weight * bce + cfg.class_ce_weight * ce
    rec = torch.zeros((), device=x.device)
    if model.decoder is not None and cfg.lambda_rec > 0:
        rec = F.mse_loss(model.decoder(z), x)
        loss = loss + cfg.lambda_rec * rec
    return loss, {"inner_loss": loss.detach(), "inner_ce": ce.detach(), "inner_rec": rec.detach()}


def outer_loss(
    model: MetaADModel,
    z_query: torch.Tensor,
    y_query: torch.Tensor,
    z_shots: torch.Tensor,
    cfg: MetaConfig,
    x_query: torch.Tensor | None = None,
    x_shots: torch.Tensor | None = None,
    episodes: int = 1,
):
    """Calibrate head and temperature on frozen features: query confident, shots not.

    Features come in detached (first-order: no gradient reaches the encoder). The rows may stack
    `episodes` equal-sized episodes: the loss is then the mean of their losses.
    """
    logits_q = model.logits(z_query, x_query)
    s_q = model.confidence_from_logits(logits_q)
    s_s = model.confidence_from_logits(model.logits(z_shots, x_shots))
    log_t = model.temperature.log_t()
    loss = (
        confidence_bce(s_q, 1.0)
        + confidence_bce(s_s, 0.0)
        + cfg.lambda_m * margin_penalty(s_q, s_s, cfg.margin, episodes)
        + cfg.lambda_t * log_t ** 2
    )
    if cfg.outer_class_ce_weight > 0:
        loss = loss + cfg.outer_class_ce_weight * F.cross_entropy(logits_q, y_query)
    margin = (s_q.mean() - s_s.mean()).detach()
    return loss, {"outer_loss": loss.detach(), "confidence_margin": margin, "temperature": log_t.exp().detach()}
