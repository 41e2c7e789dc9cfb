"""Feature scaling fitted on training normal rows only (docs/method.md section 7).

The scaler is part of every method: on NSL-KDD a QuantileTransformer instead of a
StandardScaler moves peer AUROC from below chance to ~0.9. Its fitted state travels inside
checkpoints as plain tensors so checkpoints load with ``weights_only=True``.

Fitting is scikit-learn's (StandardScaler, QuantileTransformer); applying the fitted state is
done here, in numpy, with the same arithmetic (QuantileTransformer._transform_col of
scikit-learn 1.9, normal output). Why: a process that only applies a run's scaler (a scoring
actor) would otherwise import scikit-learn, SciPy and their dependencies, ~1.2 s of CPU per
process on this machine, paid at every actor start of every `metaad score` job; and the
quantile transform below is 2.2-2.6x faster than scikit-learn's (benchmarks/scaler.py).
tests/test_scaling.py checks the result against scikit-learn's own transform.
"""
from __future__ import annotations

import numpy as np
import torch

from metaad_dist.errors import ConfigError

SCALERS = ("standard", "quantile", "none")
QUANTILES = 1000
# scikit-learn's BOUNDS_THRESHOLD: inputs within it of the fitted range's ends map to the
# clipped tails of the normal distribution instead of to +-infinity.
BOUNDS_THRESHOLD = 1e-7


class FeatureScaler:
    def __init__(self, kind: str, seed: int = 0):
        if kind not in SCALERS:
            raise ConfigError(f"data.scaler='{kind}'; expected one of {list(SCALERS)}")
        self.kind = kind
        self.seed = seed
        self.arrays: dict[str, np.ndarray] = {}  # the fitted state: mean/scale or quantiles/references

    def fit(self, x: np.ndarray) -> "FeatureScaler":
        from sklearn.preprocessing import QuantileTransformer, StandardScaler

        if self.kind == "standard":
            impl = StandardScaler().fit(x)
            self.arrays = {"mean": impl.mean_.copy(), "scale": impl.scale_.copy()}
        elif self.kind == "quantile":
            impl = QuantileTransformer(
                n_quantiles=min(QUANTILES, len(x)), output_distribution="normal",
                subsample=len(x), random_state=self.seed,
            ).fit(x)
            self.arrays = {"quantiles": impl.quantiles_.copy(), "references": impl.references_.copy()}
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if not self.arrays or len(x) == 0:
            return np.asarray(x, dtype=np.float32)
        if self.kind == "quantile":
            return quantile_normal(np.asarray(x), self.arrays["quantiles"], self.arrays["references"])
        # in place, in the input's precision, as scikit-learn does
        out = np.array(x, dtype=np.float32 if np.asarray(x).dtype == np.float32 else np.float64)
        out -= self.arrays["mean"]
        out /= self.arrays["scale"]
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def state_dict(self) -> dict:
        return {"kind": self.kind, **{k: torch.from_numpy(v.copy()) for k, v in self.arrays.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "FeatureScaler":
        scaler = cls(state["kind"])
        keys = {"standard": ("mean", "scale"), "quantile": ("quantiles", "references")}.get(scaler.kind, ())
        scaler.arrays = {k: state[k].numpy() for k in keys}
        return scaler


def quantile_normal(x: np.ndarray, quantiles: np.ndarray, references: np.ndarray) -> np.ndarray:
    """QuantileTransformer(output_distribution="normal").transform as float32, column by column.

    Each value goes to the mean of the upward and the downward interpolation between the fitted
    quantiles (so a value repeated across quantiles lands in the middle of its run), values
    within BOUNDS_THRESHOLD of the fitted range's ends go to 0 or 1, then through the normal
    quantile function, clipped so that the ends stay finite; NaN becomes 0. Float32 input is
    interpolated into float32, as scikit-learn does in place. Column-major work arrays: each
    column is one contiguous run (row-major, a column of UNSW-NB15's 190 features strides 760
    bytes per value).
    """
    columns = np.array(x, dtype=np.float32 if x.dtype == np.float32 else np.float64, order="F")
    out = np.empty(columns.shape, dtype=np.float32, order="F")
    eps = BOUNDS_THRESHOLD - np.spacing(1)
    clip_low, clip_high = torch.special.ndtri(torch.tensor([eps, 1 - eps], dtype=torch.float64)).tolist()
    for j in range(columns.shape[1]):
        column, q = columns[:, j], quantiles[:, j]
        with np.errstate(invalid="ignore"):
            low = column - BOUNDS_THRESHOLD < q[0]
            high = column + BOUNDS_THRESHOLD > q[-1]
        finite = ~np.isnan(column)
        if finite.all():
            column[:] = interp_both_ways(column, q, references)
        else:
            column[finite] = interp_both_ways(column[finite], q, references)
        column[high] = 1
        column[low] = 0
        normal = torch.special.ndtri(torch.from_numpy(column.astype(np.float64))).numpy()
        out[:, j] = np.nan_to_num(np.clip(normal, clip_low, clip_high), nan=0.0)
    return np.ascontiguousarray(out)


def interp_both_ways(v: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """0.5 * (np.interp(v, q, r) - np.interp(-v, -q[::-1], -r[::-1])), bit for bit, in one pass.

    Why not the two np.interp calls: one-hot and count columns have a few distinct values spread
    over 1000 tied quantiles, and two binary searches over all 1000 per value took ~5 s per
    250,000 UNSW-NB15 rows. Between two distinct quantile values u_k < u_k+1 both
    interpolations follow the same segment, from the last quantile equal to u_k to the first
    equal to u_k+1 (with np.interp's own slope and rounding, written out below for each
    direction); on a value both end its run's two ends; outside the range both give the end's
    reference. So one search over the distinct values is enough.
    """
    v = v.astype(np.float64)
    knots, first = np.unique(q, return_index=True)
    last = np.append(first[1:] - 1, len(q) - 1)
    k = np.searchsorted(knots, v, side="right") - 1  # knots[k] <= v < knots[k + 1]
    out = np.where(k < 0, r[0], r[-1])  # below or above the fitted range
    at = np.clip(k, 0, None)
    on_knot = (k >= 0) & (v == knots[at])
    out[on_knot] = 0.5 * (r[last[at[on_knot]]] + r[first[at[on_knot]]])
    inside = (k >= 0) & (k < len(knots) - 1) & ~on_knot
    kk, vv = k[inside], v[inside]
    lo, hi = last[kk], first[kk + 1]
    slope = (r[hi] - r[lo]) / (knots[kk + 1] - knots[kk])
    up = slope * (vv - knots[kk]) + r[lo]
    down = slope * (knots[kk + 1] - vv) - r[hi]  # np.interp on the negated, reversed arrays
    out[inside] = 0.5 * (up - down)
    return out
