"""The paper's Prune & Align (Klimaszewski et al., 2024): Pearson correlation between every
student and every teacher dimension, then a linear sum assignment picks one teacher dimension
per student dimension. The map is a selection: ``A' = A[:, picked]``, ``B' = B[picked, :]``."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from .stats import F64, PairStats, standardize


def assignment(corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(student dims, teacher dims) matched to maximise total correlation."""
    rows, cols = linear_sum_assignment(corr.cpu().numpy(), maximize=True)  # scipy: on the host, whatever the device
    return torch.as_tensor(rows, device=corr.device), torch.as_tensor(cols, device=corr.device)


def assign(stats: PairStats) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The assignment straight from the statistics, in one float64 matrix on the host: the
    negated correlation, built in place with the shorter side as rows, which is what scipy's
    solver reads without copying. Returns (student dims, teacher dims, mean correlation)."""
    rows = "s" if stats.dims["s"] <= stats.dims["t"] else "t"
    other = "t" if rows == "s" else "s"
    cost = torch.empty(stats.dims[rows], stats.dims[other], dtype=F64)
    standardize(stats, stats.covariance_into(cost, rows=rows), rows=rows).neg_()
    r, c = linear_sum_assignment(cost.numpy())
    r, c = torch.as_tensor(r), torch.as_tensor(c)
    score = float(-cost[r, c].mean())
    del cost
    student, teacher = (r, c) if rows == "s" else (c, r)
    order = torch.argsort(student)
    return student[order], teacher[order], score


def selection(student: torch.Tensor, teacher: torch.Tensor, student_dim: int, teacher_dim: int, device=None) -> torch.Tensor:
    """The dense selection (d_t, d_s): ``x_t[teacher[i]] ~ x_s[student[i]]``."""
    select = torch.zeros(teacher_dim, student_dim, dtype=F64, device=device)
    select[teacher.to(select.device), student.to(select.device)] = 1.0
    return select


NAME = "correlation"


def fit_map(stats: PairStats, kind: str, assigned, *, ridge: float) -> dict:
    """The selection (its transpose for an output, teacher -> student); ``ridge`` is unused."""
    student, teacher, score = assigned
    chosen = selection(student, teacher, stats.dims["s"], stats.dims["t"])
    return {"map": chosen.T if kind == "out" else chosen, "score": score, "score_name": "mean correlation"}
