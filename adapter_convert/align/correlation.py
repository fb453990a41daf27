"""The paper's Prune & Align (Klimaszewski et al., 2024): Pearson correlation between every
student and every teacher dimension, then a linear sum assignment picks one teacher dimension
per student dimension. The map is a selection: ``A' = A[:, picked]``, ``B' = B[picked, :]``."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from . import Fit
from .stats import PairStats


def assignment(corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(student dims, teacher dims) matched to maximise total correlation."""
    rows, cols = linear_sum_assignment(corr.numpy(), maximize=True)
    return torch.as_tensor(rows), torch.as_tensor(cols)


def fit(stats: PairStats, **_) -> Fit:
    corr = stats.correlation()
    rows, cols = assignment(corr)
    select = torch.zeros(stats.sum_t.numel(), stats.sum_s.numel(), dtype=torch.float64)  # (d_t, d_s)
    select[cols, rows] = 1.0
    return Fit(select, float(corr[rows, cols].mean()), "mean correlation")
