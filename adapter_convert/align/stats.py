"""Streaming statistics of paired activations: what every alignment method needs, in memory
that does not grow with the number of calibration tokens.

For paired rows ``x_s`` (student, width d_s) and ``x_t`` (teacher, width d_t) it keeps n, the
sums, and the cross-products ``S_ss = X_s^T X_s``, ``S_tt = X_t^T X_t``, ``S_st = X_s^T X_t``.

Two things keep them small and exact enough at real widths:

* the rows are shifted by a reference (the first batch's mean) before they are multiplied, and
  the raw cross-products are rebuilt in float64 when read (``S = C + c sum^T + sum c^T + n c c^T``).
  Activations of large models have dimensions whose mean dwarfs their spread; without the shift,
  ``S/n - mean mean^T`` cancels away the covariance in float32;
* ``full`` says which Grams are kept whole: a module input's fit solves against the student's Gram,
  an output's against the teacher's; of the other only the diagonal (variances) is needed. The
  cross-product ``S_st`` is always whole. ``dtype`` (float64 by default) is the element type of
  the matrices; vectors (sums, diagonals) are always float64.
"""

from __future__ import annotations

import torch

F64 = torch.float64


class PairStats:
    def __init__(self, student_dim: int, teacher_dim: int, *, dtype: torch.dtype = F64, full: tuple[str, ...] = ("s", "t"),
                 device: torch.device | str = "cpu"):
        self.dims = {"s": student_dim, "t": teacher_dim}
        self.dtype, self.full = dtype, tuple(full)
        self.n = 0
        self.shift = {side: torch.zeros(d, dtype=F64, device=device) for side, d in self.dims.items()}
        self.csum = {side: torch.zeros(d, dtype=F64, device=device) for side, d in self.dims.items()}
        self.cdiag = {side: torch.zeros(d, dtype=F64, device=device) for side, d in self.dims.items()}
        self.gram_c = {side: torch.zeros(d, d, dtype=dtype, device=device) for side, d in self.dims.items() if side in self.full}
        self.cross_c = torch.zeros(student_dim, teacher_dim, dtype=dtype, device=device)  # centered S_st

    @property
    def device(self) -> torch.device:
        return self.cross_c.device

    def nbytes(self) -> int:
        tensors = [self.cross_c, *self.gram_c.values(), *self.shift.values(), *self.csum.values(), *self.cdiag.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def update(self, x_student: torch.Tensor, x_teacher: torch.Tensor) -> None:
        """Add paired rows: (n, d_s) and (n, d_t)."""
        if self.n == 0 and self.device != x_student.device:  # accumulate where the activations are
            self._move(x_student.device)
        # own copies: the rows are shifted in place below, and must not change the caller's tensors
        # (float64 input on this device would otherwise be the same tensor, or both sides one tensor)
        s = x_student.reshape(-1, self.dims["s"]).to(self.device, F64, copy=True)
        t = x_teacher.reshape(-1, self.dims["t"]).to(self.device, F64, copy=True)
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"paired rows differ in number: {s.shape[0]} vs {t.shape[0]}")
        if s.shape[0] == 0:
            return
        if self.n == 0:
            self.shift = {"s": s.mean(0), "t": t.mean(0)}
        self.n += s.shape[0]
        rows = {}
        for side, x in (("s", s), ("t", t)):
            x -= self.shift[side]
            self.csum[side] += x.sum(0)
            self.cdiag[side] += (x * x).sum(0)
            rows[side] = x if self.dtype == F64 else x.to(self.dtype)
        for side, gram in self.gram_c.items():
            gram.addmm_(rows[side].T, rows[side])  # in place: no d x d temporary
        self.cross_c.addmm_(rows["s"].T, rows["t"])

    def _move(self, device) -> None:
        for name in ("shift", "csum", "cdiag", "gram_c"):
            setattr(self, name, {k: v.to(device) for k, v in getattr(self, name).items()})
        self.cross_c = self.cross_c.to(device)

    # -- reading back, in float64 -------------------------------------------------------------

    def sum(self, side: str) -> torch.Tensor:
        return self.csum[side] + self.n * self.shift[side]

    def diagonal(self, side: str) -> torch.Tensor:
        """diag(X^T X) of one side, raw."""
        c, shift = self.csum[side], self.shift[side]
        return self.cdiag[side] + 2 * shift * c + self.n * shift**2

    def gram(self, side: str) -> torch.Tensor:
        """X^T X of one side, raw, as a new float64 matrix (that side must be kept in ``full``)."""
        if side not in self.gram_c:
            raise ValueError(f"the {side!r} Gram was not kept (full={self.full})")
        source = self.gram_c[side]
        g = torch.empty(source.shape, dtype=F64, device=source.device)
        for start in range(0, source.shape[0], 1024):  # converted by row blocks: no other full-size temporary
            g[start : start + 1024].copy_(source[start : start + 1024])
        c, shift = self.csum[side], self.shift[side]
        g.addr_(shift, c).addr_(c, shift).addr_(shift, shift, alpha=self.n)
        return g

    def release_gram(self, side: str) -> None:
        """Forget a Gram once it is no longer needed (its diagonal stays)."""
        self.gram_c.pop(side, None)

    def cross_block(self, x: str, columns: slice) -> torch.Tensor:
        """Raw float64 ``X_x^T X_y[:, columns]`` (d_x, b), x the side whose rows index it."""
        y = "t" if x == "s" else "s"
        block = self.cross_c[:, columns] if x == "s" else self.cross_c[columns, :].T
        out = block.to(F64, copy=True)
        sx, sy, cx, cy = self.shift[x], self.shift[y][columns], self.csum[x], self.csum[y][columns]
        return out.addr_(sx, cy).addr_(cx, sy).addr_(sx, sy, alpha=self.n)

    def cross_diagonal(self) -> torch.Tensor:
        """diag(S_st) when the widths are equal."""
        s, t = self.shift["s"], self.shift["t"]
        return self.cross_c.diagonal().double() + s * self.csum["t"] + self.csum["s"] * t + self.n * s * t

    @property
    def sum_s(self) -> torch.Tensor:
        return self.sum("s")

    @property
    def sum_t(self) -> torch.Tensor:
        return self.sum("t")

    @property
    def ss(self) -> torch.Tensor:
        return self.gram("s")

    @property
    def tt(self) -> torch.Tensor:
        return self.gram("t")

    @property
    def st(self) -> torch.Tensor:
        return self.cross_block("s", slice(None))

    def variances(self, side: str) -> torch.Tensor:
        mean = self.csum[side] / self.n
        return self.cdiag[side] / self.n - mean**2

    def covariance_into(self, out: torch.Tensor, *, rows: str) -> torch.Tensor:
        """Write the covariance, (d_rows, d_other), into ``out`` (float64, any device): no other full-size temporary."""
        other = "t" if rows == "s" else "s"
        out.copy_(self.cross_c if rows == "s" else self.cross_c.T)
        out.mul_(1 / self.n)
        mean_r, mean_o = (self.csum[rows] / self.n).to(out.device), (self.csum[other] / self.n).to(out.device)
        return out.addr_(mean_r, mean_o, alpha=-1)

    def correlation(self) -> torch.Tensor:
        """Pearson correlation of every student dimension with every teacher dimension, (d_s, d_t),
        as one standardized product of the accumulated cross-products."""
        corr = torch.empty(self.dims["s"], self.dims["t"], dtype=F64, device=self.device)
        return standardize(self, self.covariance_into(corr, rows="s"), rows="s")

    def transposed(self) -> PairStats:
        """The same statistics with the roles of student and teacher swapped (shares the tensors)."""
        swapped = PairStats.__new__(PairStats)
        flip = lambda d: {("t" if k == "s" else "s"): v for k, v in d.items()}  # noqa: E731
        swapped.dims, swapped.dtype, swapped.n = flip(self.dims), self.dtype, self.n
        swapped.full = tuple("t" if k == "s" else "s" for k in self.full)
        swapped.shift, swapped.csum, swapped.cdiag, swapped.gram_c = (flip(d) for d in (self.shift, self.csum, self.cdiag, self.gram_c))
        swapped.cross_c = self.cross_c.T
        return swapped


def standardize(stats: PairStats, cov: torch.Tensor, *, rows: str) -> torch.Tensor:
    """Covariance -> Pearson correlation in place; a constant dimension correlates with nothing
    (0, not noise divided by ~0)."""
    other = "t" if rows == "s" else "s"
    for side, dim in ((rows, 0), (other, 1)):
        var = stats.variances(side).to(cov.device)
        live = var > 1e-12 * var.max().clamp_min(1e-30)
        scale = torch.where(live, 1 / var.clamp_min(1e-30).sqrt(), torch.zeros_like(var))
        cov.mul_(scale[:, None] if dim == 0 else scale[None, :])
    return cov
