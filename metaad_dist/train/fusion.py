"""Choosing the normal memory's fusion weights by leave-one-meta-family-out.

Why: how far to trust the network against the one-class evidence depends on the data. Where
unseen families resemble the seen ones, the shots teach the network what matters and a
network-led fusion wins (UNSW-NB15); where they do not, the network learns cues of the seen
families that mislead on new ones and the one-class evidence should lead (NSL-KDD). A run may
not look at its held-out families, but it can re-enact the protocol on its own meta families:
train the network without one meta family, then ask which candidate weights rank that family's
shots above validation normal rows. This is leave-one-domain-out model selection (Gulrajani &
Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021) applied to the fusion only;
the returned model is still the one trained on every meta family.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from metaad_dist.config import Config
from metaad_dist.episodes.sampler import EpisodeSampler
from metaad_dist.eval.metrics import auroc_difference_variance, detection_metrics
from metaad_dist.model.memory import tail_evidence
from metaad_dist.model.networks import MetaADModel
from metaad_dist.train.setup import TrainingSetup, fusion_candidates

# (cfg, setup) -> the network trained on that setup, memory not filled.
FitNetwork = Callable[[Config, TrainingSetup], MetaADModel]


@dataclass
class HeldOutFold:
    """Evidences (components x rows) with the network trained without `family`."""

    family: str
    normal: np.ndarray  # calibration normal rows
    shots: np.ndarray  # that family's budget rows


@dataclass
class FusionChoice:
    """What the choice saw, for reports: aurocs[candidate, fold] over the held-out families."""

    families: list[str]
    candidates: list[list[float]]
    aurocs: np.ndarray
    chosen: int


def choose_weights(
    candidates: Sequence[Sequence[float]], folds: Sequence[HeldOutFold], rule: str = "delong"
) -> FusionChoice:
    """How well each candidate ranks each fold's shots above its normal rows (AUROC), and the
    candidate `pick_candidate` takes from that."""
    weights = [np.asarray(c, dtype=np.float64) for c in candidates]
    # scores[candidate][fold] = (normal rows, shots), fused with that candidate's weights
    scores = [[(w[: len(f.normal)] @ f.normal, w[: len(f.shots)] @ f.shots) for f in folds] for w in weights]
    aurocs = np.array([[detection_metrics(*fold)["auroc"] for fold in per_fold] for per_fold in scores])

    def gap_se(i: int, j: int) -> float:
        """Standard error of the mean over folds of AUROC_i - AUROC_j (independent folds)."""
        variance = sum(auroc_difference_variance(*scores[i][f], *scores[j][f]) for f in range(len(folds)))
        return float(np.sqrt(variance)) / len(folds)

    chosen = pick_candidate(candidates, aurocs, rule, gap_se)
    return FusionChoice([f.family for f in folds], [list(c) for c in candidates], aurocs, chosen)


def pick_candidate(
    candidates: Sequence[Sequence[float]],
    aurocs: np.ndarray,
    rule: str = "delong",
    gap_se: Optional[Callable[[int, int], float]] = None,
) -> int:
    """Index of the chosen candidate, given aurocs[candidate, fold] and, for rule delong,
    gap_se(i, j): the standard error of the mean AUROC difference of candidates i and j.

    Every rule leans away from the network: among the candidates as good as the one with the
    best mean, the one giving the network the least weight wins (then the higher mean, then the
    first). Why: the network's evidence is fitted to the seen families' shots and its
    held-out-meta-family estimate is optimistic (the meta families it keeps resemble the one left
    out more than truly new families do), while the one-class evidence uses no shots at all; so
    the shots must buy a gain larger than the noise of measuring it on a few shots. "As good as
    the best": the best mean beats it by at most
    - delong: one standard error of that paired difference, from the shots and normal rows the
      AUROCs rest on (`auroc_difference_variance`);
    - one_se: one standard error of the per-fold gaps, the one-standard-error rule (Breiman et
      al., "Classification and Regression Trees", 1984; Hastie, Tibshirani, Friedman, ESL
      section 7.10). Not the default: it counts real differences between families as noise, and
      on UNSW-NB15 drops the network on folds where it should lead;
    - best_mean: nothing (the best mean alone).
    """
    means = aurocs.mean(axis=1)
    best = int(np.argmax(means))
    folds = aurocs.shape[1]

    def tolerance(i: int) -> float:
        if i == best or rule == "best_mean" or (rule == "one_se" and folds < 2):
            return 0.0
        if rule == "one_se":
            return float((aurocs[best] - aurocs[i]).std(ddof=1) / np.sqrt(folds))
        return gap_se(best, i)

    return min(
        (i for i in range(len(candidates)) if means[best] - means[i] <= tolerance(i)),
        key=lambda i: (candidates[i][0], -means[i], i),
    )


def fold_families(meta: Sequence[str], folds: int, seed: int) -> list[str]:
    """A seeded choice of at most `folds` meta families to hold out in turn."""
    order = np.random.default_rng(seed).permutation(len(meta))
    return [meta[i] for i in sorted(order[:folds])]


@dataclass
class Calibration:
    """The calibration normal rows and their one-class evidence: the same for every fold, so
    computed once (the kNN part costs one distance per memory row and calibration row)."""

    normal: torch.Tensor
    one_class: torch.Tensor  # (one-class components, rows)


def fold_plan(cfg: Config, setup: TrainingSetup, fit: Optional[FitNetwork]) -> list[str]:
    """The meta families the fusion choice holds out in turn, each one a training run; [] when
    there is no choice to make (no memory, one candidate, no `fit`, or one meta family, which
    cannot be held out: the network would have no shots left). Known before the run's own loop."""
    no_memory = setup.model_args.get("memory_rows", 0) == 0
    if no_memory or fit is None or len(fusion_candidates(cfg.model)) == 1 or len(setup.roles.meta) < 2:
        return []
    return fold_families(list(setup.roles.meta), cfg.model.fusion_folds, cfg.seed)


def fold_network(cfg: Config, setup: TrainingSetup, family: str, fit: FitNetwork) -> MetaADModel:
    """The network trained without `family` (no memory: only its network score is needed). Needs
    nothing of the run's own model, so folds can train anywhere (Ray: one worker each)."""
    roles = dataclasses.replace(
        setup.roles,
        meta=tuple(f for f in setup.roles.meta if f != family),
        held_out=setup.roles.held_out + (family,),
    )
    sub_cfg = OmegaConf.merge(
        cfg, {"quiet": True, "model": {"memory_rows": 0}, "meta": {"episodes": fold_episodes(cfg)}}
    )
    return fit(sub_cfg, setup_without(sub_cfg, setup, roles)).eval()


def fold_episodes(cfg: Config) -> int:
    """Episodes of a fold network: model.fusion_fold_episodes of the run's meta.episodes (at
    least one). The folds only rank candidate weights against each other, so they need a network
    shaped like the run's, not one as finished."""
    return max(1, math.ceil(cfg.model.fusion_fold_episodes * cfg.meta.episodes))


def setup_without(sub_cfg: Config, setup: TrainingSetup, roles) -> TrainingSetup:
    """The setup `build_setup(sub_cfg, setup.source, roles)` would build for `roles` (the run's
    minus one meta family), derived from the run's instead of re-read and refitted: the
    normal rows, their split, scaler and k-means labels depend on the normal families and the
    seed only, and each family's budget pool on that family and the seed (data/views.py), so
    only the budget pools and the episode schedule change. Saves a data read, a scaler fit and
    a k-means fit per fold (about 15 s each on UNSW-NB15)."""
    kept = [f for f in setup.view.budget_x if f in roles.meta]
    view = dataclasses.replace(
        setup.view,
        budget_x={f: setup.view.budget_x[f] for f in kept},
        budget_row_ids={f: setup.view.budget_row_ids[f] for f in kept},
    )
    if setup.path == "streaming":  # the same layouts and statistics, the fold's budget pools
        from metaad_dist.episodes.stream import StreamingEpisodeSampler

        sampler = StreamingEpisodeSampler(sub_cfg, setup.scaler, setup.labeler, view.budget_row_ids, setup.layouts)
    else:
        sampler = EpisodeSampler(
            setup.sampler.normal_x, setup.sampler.normal_labels, view.normal_family_index, len(view.normal_families),
            {f: setup.sampler.budget_x[f] for f in kept}, sub_cfg.meta, sub_cfg.seed,
        )
    return dataclasses.replace(
        setup, roles=roles, view=view, sampler=sampler,
        model_args=fold_model_args(setup),
        memory_x=setup.memory_x[:0], calibration_x=setup.calibration_x[:0],
    )


def fold_model_args(setup: TrainingSetup) -> dict:
    """A fold network's MetaADModel arguments: the run's, without the normal memory."""
    return {**setup.model_args, "memory_rows": 0, "calibration_rows": 0}


@torch.no_grad()
def fold_evidence(
    cfg: Config, setup: TrainingSetup, model: MetaADModel, calibration: Calibration, network: MetaADModel, family: str
) -> HeldOutFold:
    device = calibration.normal.device
    shots = torch.as_tensor(setup.scaler.transform(setup.view.budget_x[family]), dtype=torch.float32, device=device)
    normal_network = network.network_score(calibration.normal, cfg.model.score)
    reference = normal_network.sort().values

    def network_evidence(score: torch.Tensor) -> torch.Tensor:
        return tail_evidence(reference, score)[None]

    normal = torch.cat([network_evidence(normal_network), calibration.one_class])
    shot = torch.cat([network_evidence(network.network_score(shots, cfg.model.score)), model.memory.one_class_evidence(shots)])
    return HeldOutFold(family, normal.cpu().numpy(), shot.cpu().numpy())


def choose_fusion(
    cfg: Config, setup: TrainingSetup, model: MetaADModel, networks: dict[str, MetaADModel],
    log: Callable[[str], None] = print,
) -> MetaADModel:
    """Set the filled memory's fusion weights from the fold networks (`fold_network`, in
    `fold_plan` order): the candidate `choose_weights` picks, or the first without folds."""
    if model.memory is None or not bool(model.memory.ready):
        return model
    candidates = fusion_candidates(cfg.model)
    if not networks:
        model.memory.set_weights(candidates[0])
        return model
    device = next(model.parameters()).device
    normal = torch.as_tensor(setup.calibration_x, dtype=torch.float32, device=device)
    calibration = Calibration(normal, model.memory.one_class_evidence(normal))
    folds = [
        fold_evidence(cfg, setup, model, calibration, network.to(device), family) for family, network in networks.items()
    ]
    choice = choose_weights(candidates, folds, cfg.model.fusion_rule)
    model.memory.set_weights(candidates[choice.chosen])
    model.memory.choice = choice
    if not cfg.quiet:
        shown = ", ".join(f"{c} {m:.3f}" for c, m in zip(candidates, choice.aurocs.mean(axis=1)))
        log(f"[fusion] leave-one-family-out over {list(networks)}: {shown} -> weights {candidates[choice.chosen]}")
    return model


def finish_training(
    cfg: Config, setup: TrainingSetup, model: MetaADModel, fit: Optional[FitNetwork], log: Callable[[str], None] = print
) -> MetaADModel:
    """Fill the normal memory and set its fusion weights: chosen among the candidates when
    there are several and `fit` can train the held-out-family networks, else the first. The
    reference, all in this process: the local trainer trains the fold networks beside its loop
    (fold_processes.py), Ray Train over its workers, both with the same result."""
    setup.finish_model(model, cfg.model.score, cfg.seed)
    networks = {family: fold_network(cfg, setup, family, fit) for family in fold_plan(cfg, setup, fit)}
    return choose_fusion(cfg, setup, model, networks, log)
