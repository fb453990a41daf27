"""Ridge-regularised least squares through the origin, shrunk toward the correlation assignment:

    M = argmin ||X_t - X_s M^T||^2 + lambda ||(M - P) D^(1/2)||^2
      = (S_ts + lambda P D) (S_ss + lambda D)^-1

with ``P`` the paper's correlation assignment (a selection) and ``D = diag(S_ss)`` (the ridge of
standardized features, so a few huge-magnitude dimensions do not set the shrinkage of all others).
Residual streams occupy a lower-dimensional subspace, so plain least squares leaves many
directions undetermined, and shrinking those to zero generalizes badly once an adapter moves
activations off the calibration data; shrinking toward the assignment keeps them meaningful.
Where the data determine the map, least squares wins. No intercept: a LoRA has no bias."""

from __future__ import annotations

import torch

from . import Fit
from . import correlation as correlation_method
from .stats import PairStats

DEFAULT_RIDGE = 1e-2


def fit(stats: PairStats, *, ridge: float = DEFAULT_RIDGE, **_) -> Fit:
    diagonal = stats.ss.diagonal()
    # dead (constant ~0) dimensions: a floor keeps them solvable and pinned to the prior
    weights = ridge * diagonal.clamp_min(1e-6 * diagonal.mean().clamp_min(1e-30))
    prior = correlation_method.fit(stats).matrix  # (d_t, d_s)
    gram = stats.ss + torch.diag(weights)
    matrix = torch.linalg.solve(gram, stats.st + weights[:, None] * prior.T).T  # (d_t, d_s); gram is symmetric
    return Fit(matrix, r_squared(stats, matrix), "R^2")


def r_squared(stats: PairStats, matrix: torch.Tensor) -> float:
    """Mean over teacher dimensions of the share of variance ``M x_s`` explains, from the
    statistics alone; constant dimensions (no variance to explain) are left out."""
    # per dimension i: ||X_t[:, i] - X_s M_i^T||^2 = S_tt[i,i] - 2 M_i S_st[:, i] + M_i S_ss M_i^T
    residual = stats.tt.diagonal() - 2 * (matrix * stats.st.T).sum(1) + ((matrix @ stats.ss) * matrix).sum(1)
    total = stats.tt.diagonal() - stats.sum_t**2 / stats.n
    live = total > 1e-9 * total.max().clamp_min(1e-30)
    return float((1 - residual[live] / total[live]).mean())
