"""Streaming statistics of paired activations: what every alignment method needs, in memory
that does not grow with the number of calibration tokens.

For paired rows ``x_s`` (student, width d_s) and ``x_t`` (teacher, width d_t) it keeps
n, the sums, and the cross-products ``S_ss = X_s^T X_s``, ``S_tt = X_t^T X_t``,
``S_st = X_s^T X_t`` (float64).
"""

from __future__ import annotations

import torch


class PairStats:
    def __init__(self, student_dim: int, teacher_dim: int):
        f64 = dict(dtype=torch.float64)
        self.n = 0
        self.sum_s = torch.zeros(student_dim, **f64)
        self.sum_t = torch.zeros(teacher_dim, **f64)
        self.ss = torch.zeros(student_dim, student_dim, **f64)
        self.tt = torch.zeros(teacher_dim, teacher_dim, **f64)
        self.st = torch.zeros(student_dim, teacher_dim, **f64)

    def update(self, x_student: torch.Tensor, x_teacher: torch.Tensor) -> None:
        """Add paired rows: (n, d_s) and (n, d_t)."""
        s, t = x_student.reshape(-1, self.sum_s.numel()).double(), x_teacher.reshape(-1, self.sum_t.numel()).double()
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"paired rows differ in number: {s.shape[0]} vs {t.shape[0]}")
        self.n += s.shape[0]
        self.sum_s += s.sum(0)
        self.sum_t += t.sum(0)
        self.ss += s.T @ s
        self.tt += t.T @ t
        self.st += s.T @ t

    def correlation(self) -> torch.Tensor:
        """Pearson correlation of every student dimension with every teacher dimension, (d_s, d_t),
        as one standardized product of the accumulated cross-products."""
        n = self.n
        mean_s, mean_t = self.sum_s / n, self.sum_t / n
        cov = self.st / n - torch.outer(mean_s, mean_t)
        var_s = self.ss.diagonal() / n - mean_s**2
        var_t = self.tt.diagonal() / n - mean_t**2
        # a constant dimension correlates with nothing: 0, not noise divided by ~0
        live_s, live_t = var_s > 1e-12 * var_s.max().clamp_min(1e-30), var_t > 1e-12 * var_t.max().clamp_min(1e-30)
        corr = cov / torch.outer(var_s.clamp_min(1e-30).sqrt(), var_t.clamp_min(1e-30).sqrt())
        return corr * torch.outer(live_s, live_t)
