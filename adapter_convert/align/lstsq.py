"""Ridge-regularised least squares through the origin: ``x_t ~ M x_s`` with
``M = S_ts (S_ss + lambda I)^-1``, lambda relative to the mean diagonal of ``S_ss``.
No intercept, since a LoRA has no bias to fold one into."""

from __future__ import annotations

import torch

from . import Fit
from .stats import PairStats

DEFAULT_RIDGE = 1e-3


def fit(stats: PairStats, *, ridge: float = DEFAULT_RIDGE, **_) -> Fit:
    d_s = stats.ss.shape[0]
    lam = ridge * stats.ss.diagonal().mean().clamp_min(1e-12)
    gram = stats.ss + lam * torch.eye(d_s, dtype=torch.float64)
    matrix = torch.linalg.solve(gram, stats.st).T  # (d_t, d_s); gram is symmetric
    return Fit(matrix, r_squared(stats, matrix), "R^2")


def r_squared(stats: PairStats, matrix: torch.Tensor) -> float:
    """Share of the teacher activations' variance that ``M x_s`` explains, from the statistics alone."""
    # ||X_t - X_s M^T||^2 = tr(S_tt) - 2 tr(M S_st) + tr(M S_ss M^T)
    residual = stats.tt.trace() - 2 * (matrix * stats.st.T).sum() + (matrix @ stats.ss * matrix).sum()
    total = stats.tt.trace() - (stats.sum_t**2).sum() / stats.n
    return float(1 - residual / total.clamp_min(1e-12))
